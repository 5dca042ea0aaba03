//! Helpers of the store end-to-end tests: a raw HTTP client (any method, any body, every answer
//! kept), error-shape checks, and the server's memory from `/proc`.

use std::time::Duration;

use serde_json::Value;

/// One HTTP answer: status and the body as JSON (`Null` when it is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
}

impl Answer {
    /// The `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// The `error.field` of an error answer.
    pub fn field(&self) -> &str {
        self.json["error"]["field"].as_str().unwrap_or("")
    }

    /// Asserts a 4xx with the API's error shape (`{"error":{"code","message","field"}}`),
    /// the given code, and (when given) the field.
    #[track_caller]
    pub fn assert_error(&self, what: &str, status: u16, code: &str, field: Option<&str>) {
        let e = &self.json["error"];
        assert!(
            e.is_object()
                && e["code"].is_string()
                && e["message"].as_str().is_some_and(|m| !m.is_empty())
                && e.as_object().is_some_and(|o| o.contains_key("field")),
            "{what}: not the error shape: {} {}",
            self.status,
            self.json
        );
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "{what}: {}",
            self.json
        );
        if let Some(f) = field {
            assert_eq!(self.field(), f, "{what}: {}", self.json);
        }
    }
}

/// A raw client for one server.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .default_headers(crate::common::auth_for(base))
                .build()
                .expect("reqwest client"),
        }
    }

    /// Sends `method path` with a raw body (JSON content type) and returns the answer.
    pub async fn raw(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.expect("response body");
        Answer {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn json(&self, method: &str, path: &str, body: &Value) -> Answer {
        self.raw(method, path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.raw("GET", path, None).await
    }

    /// `GET /v1/queues/{q}`, asserting success.
    pub async fn queue(&self, q: &str) -> Value {
        let a = self.get(&format!("/v1/queues/{q}")).await;
        assert_eq!(a.status, 200, "show queue {q}: {}", a.json);
        a.json
    }
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
