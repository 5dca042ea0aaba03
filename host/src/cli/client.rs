//! The CLI's HTTP client for sluice's `/v1/` API: one place that turns an error body
//! (`{"error":{"code","message","field"}}`) or a refused connection into one clear line.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Default server URL, where `sluice serve` listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Why a request failed, phrased for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered.
    #[error("cannot reach sluice at {server}: {detail}\nhint: is `sluice serve` running? Use --server URL or SLUICE_SERVER to point elsewhere.")]
    Unreachable {
        /// The server URL.
        server: String,
        /// The transport error.
        detail: String,
    },
    /// The server answered with an error body.
    #[error("{code}: {message}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code (MNS names where MNS has one).
        code: String,
        /// What went wrong.
        message: String,
        /// The offending field.
        field: Option<String>,
    },
    /// The `--ca-cert` file could not be used.
    #[error("CA certificate {path}: {detail}\nhint: give the PEM file of the certificate that `sluice serve --http-tls-cert` uses (or of the CA that signed it)")]
    CaCert {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The server answered something that is not sluice's API.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    field: Option<String>,
}

/// A thin client bound to one server.
#[derive(Debug, Clone)]
pub struct Client {
    server: String,
    http: reqwest::Client,
}

/// The access key for `server`, as `ID:SECRET`: `explicit` (`--key`, or `SLUICE_KEY` through
/// clap), else the server's entry in the credentials file (which `serve` writes on its own
/// machine). `None` when neither has one; the server then answers 401 with what to do.
pub fn resolve_key(explicit: Option<String>, server: &str) -> Option<String> {
    if explicit.is_some() {
        return explicit;
    }
    let dir = crate::credentials::config_dir().ok()?;
    match crate::credentials::lookup(&dir, server) {
        Ok(entry) => entry.map(|e| format!("{}:{}", e.key_id, e.secret)),
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    }
}

/// Default headers carrying `key` (`ID:SECRET`) as `Authorization: Bearer ID:SECRET`.
pub fn auth_headers(key: Option<&str>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(Ok(mut v)) =
        key.map(|k| reqwest::header::HeaderValue::from_str(&format!("Bearer {k}")))
    {
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    headers
}

/// The certificates of a `--ca-cert` PEM file: extra roots to trust for an `https://` server.
pub fn read_ca_cert(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let ca_err = |detail: String| ClientError::CaCert {
        path: path.to_path_buf(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ca_err(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// `builder`, trusting `certs` (read from `path`) besides the web's roots.
pub fn trusting(
    mut builder: reqwest::ClientBuilder,
    path: &std::path::Path,
    certs: &[CertificateDer<'_>],
) -> Result<reqwest::ClientBuilder, ClientError> {
    for cert in certs {
        let cert = reqwest::Certificate::from_der(cert).map_err(|e| ClientError::CaCert {
            path: path.to_path_buf(),
            detail: format!("not a certificate: {e}"),
        })?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

impl Client {
    /// A client for `server` (e.g. `http://127.0.0.1:8080`) sending `key` (`ID:SECRET`, see
    /// [`resolve_key`]) on every request. `ca_cert` is a PEM file of extra certificates to
    /// trust for an `https://` server (a self-signed `--http-tls-cert`, or a private CA).
    pub fn new(
        server: &str,
        key: Option<&str>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Client, ClientError> {
        // Beyond the longest request the server holds open: a 60 s synchronous call.
        let builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(75))
            .default_headers(auth_headers(key));
        let builder = match ca_cert {
            Some(path) => trusting(builder, path, &read_ca_cert(path)?)?,
            None => builder,
        };
        Ok(Client {
            server: server.trim_end_matches('/').to_string(),
            http: builder.build().expect("a TLS-capable HTTP client builds"),
        })
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// `GET path` and decode JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    /// `POST path` with a JSON body and decode JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// `PUT path` with a JSON body and decode JSON.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    /// `DELETE path` and decode JSON.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.delete(self.url(path))).await
    }

    /// `GET path` and hand back the successful response unread, for large bodies that are
    /// streamed to a file (`sluice backup`); an error answer becomes a [`ClientError`] as usual.
    pub async fn get_raw(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let response = self
            .http
            .get(self.url(path))
            // A backup of a large store can take longer than an API call.
            .timeout(std::time::Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                server: self.server.clone(),
                detail: error_chain(&e),
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let url = response.url().to_string();
        let bytes = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
                field: body.error.field,
            },
            Err(_) => ClientError::Protocol {
                url,
                detail: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            },
        })
    }

    /// `PATCH path` with a JSON body and decode JSON.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.patch(self.url(path)).json(body)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            server: self.server.clone(),
            detail: error_chain(&e),
        })?;
        let status = response.status();
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|e| ClientError::Protocol {
            url: url.clone(),
            detail: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api {
                    status: status.as_u16(),
                    message: if body.error.code == "MissingAuthorizationHeader" {
                        format!(
                            "{}\nhint: pass --key ID:SECRET or set SLUICE_KEY; on the server's \
                             machine the admin key is read from $SLUICE_CONFIG_DIR/credentials.toml",
                            body.error.message
                        )
                    } else {
                        body.error.message
                    },
                    code: body.error.code,
                    field: body.error.field,
                },
                Err(_) => ClientError::Protocol {
                    url,
                    detail: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                },
            });
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol {
            url,
            detail: format!("invalid JSON: {e}"),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes one path segment (receipt handles and names are URL-safe already; this
/// guards against anything a user types).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
