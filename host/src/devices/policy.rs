//! Who may connect, and what each session may publish and subscribe to: the device registry's
//! implementation of the listener's [`ConnectPolicy`].
//!
//! - A CONNECT that looks like a device sign-in (a user name with `&`, or a client id with `|`)
//!   must be a valid one-device-one-secret signature of a registered device; anything else is
//!   refused with "bad user name or password" (an unknown device gets the same answer, so the
//!   refusal does not reveal which devices exist).
//! - Other CONNECTs are anonymous: accepted from a loopback address only (what Mosquitto 2 does
//!   when no listener is configured), unless `--mqtt-allow-anonymous`; otherwise "not
//!   authorised".
//! - A signed-in device publishes and subscribes only within its own topics:
//!   `/{pk}/{dn}/...`, `/sys/{pk}/{dn}/...`, the SDK's OTA topics `/ota/device/{kind}/{pk}/{dn}`
//!   and the custom-topic synchronous calls `/ext/rrpc/{id}/{pk}/{dn}/...`.
//! - An anonymous session may use neither a registered product's topics (it would speak for a
//!   device it has not proven to be) nor the status topics `/as/mqtt/status/...`; a wildcard that
//!   could reach them is refused too. Nobody publishes to the status topics: sluice writes them.

use std::net::IpAddr;
use std::sync::Arc;

use super::auth::SignIn;
use super::record::{is_reserved_product_key, RESERVED_PRODUCT_KEYS};
use super::DeviceRegistry;
use crate::ingest::{ConnectInfo, ConnectPolicy, ConnectRefusal, DeviceIdentity, SessionInfo};

/// The first levels of the device status topics (after the empty level of the leading `/`).
const STATUS_PREFIX: [&str; 4] = ["", "as", "mqtt", "status"];

/// The device registry's connect/publish/subscribe policy.
#[derive(Debug, Clone)]
pub struct DevicePolicy {
    registry: Arc<DeviceRegistry>,
    allow_anonymous: bool,
}

impl DevicePolicy {
    /// A policy over `registry`; `allow_anonymous` accepts anonymous clients from any address.
    pub fn new(registry: Arc<DeviceRegistry>, allow_anonymous: bool) -> DevicePolicy {
        DevicePolicy {
            registry,
            allow_anonymous,
        }
    }

    fn anonymous_may_use(&self, name: &str) -> bool {
        let levels: Vec<&str> = name.split('/').collect();
        if could_match(&levels, &STATUS_PREFIX.map(Some)) {
            return false;
        }
        if !self.registry.has_products() {
            return true;
        }
        // The product-key level of each topic family: a wildcard there (or a `#` before it)
        // reaches every product; a literal must not be a registered product key.
        let families: [&[Option<&str>]; 4] = [
            &[Some(""), None],
            &[Some(""), Some("sys"), None],
            &[Some(""), Some("ota"), Some("device"), None, None],
            &[Some(""), Some("ext"), Some("rrpc"), None, None],
        ];
        for pattern in families {
            if !could_match(&levels, pattern) {
                continue;
            }
            let pos = pattern.len() - 1;
            let reaches_any =
                levels.iter().take(pos + 1).any(|l| *l == "#") || levels.get(pos) == Some(&"+");
            if reaches_any || levels.get(pos).is_some_and(|l| self.registry.is_product(l)) {
                return false;
            }
        }
        true
    }
}

/// True when some topic whose first levels are `pattern` (`None` = any value) could be matched
/// by `levels` (a topic name or filter split at `/`).
fn could_match(levels: &[&str], pattern: &[Option<&str>]) -> bool {
    for (i, want) in pattern.iter().enumerate() {
        match levels.get(i) {
            None => return false,
            Some(&"#") => return true,
            Some(&"+") => {}
            Some(level) => {
                if want.is_some_and(|w| w != *level) {
                    return false;
                }
            }
        }
    }
    true
}

/// True when `levels` lies inside the device's own topics, with its product key and device name
/// written out (never a wildcard) and at least one level after them. Levels are compared whole.
/// A reserved product key (stored by an older version) owns nothing: its custom family
/// `/{pk}/{dn}/...` would be another product's `/sys/{dn}/...` or `/ota/device/...`.
pub(crate) fn is_own(levels: &[&str], pk: &str, dn: &str) -> bool {
    if is_reserved_product_key(pk) {
        return false;
    }
    // Each family's first levels (`*`: any one level, not `#`), and whether its topics end at
    // the device name (OTA) or need a level after it.
    let families: [(&[&str], bool); 4] = [
        (&["", pk, dn], false),
        (&["", "sys", pk, dn], false),
        (&["", "ota", "device", "*", pk, dn], true),
        (&["", "ext", "rrpc", "*", pk, dn], false),
    ];
    families.iter().any(|(prefix, ends_at_device)| {
        let exact = prefix
            .iter()
            .zip(levels)
            .all(|(p, l)| (*p == "*" && *l != "#") || p == l);
        let long_enough = if *ends_at_device {
            levels.len() == prefix.len()
        } else {
            levels.len() > prefix.len()
        };
        exact && long_enough
    })
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

impl ConnectPolicy for DevicePolicy {
    fn on_connect(&self, info: &ConnectInfo) -> Result<Option<DeviceIdentity>, ConnectRefusal> {
        let username = info.username.as_deref().unwrap_or("");
        let device_sign_in = username.contains('&') || info.client_id.contains('|');
        if !device_sign_in {
            if self.allow_anonymous || is_loopback(info.peer.ip()) {
                return Ok(None);
            }
            tracing::info!(peer = %info.peer, "anonymous MQTT client refused: anonymous clients are accepted on loopback only (see --mqtt-allow-anonymous)");
            return Err(ConnectRefusal::NotAuthorized);
        }
        let sign_in = SignIn::parse(&info.client_id, username, info.password.as_deref())
            .map_err(|e| {
                tracing::info!(peer = %info.peer, client_id = %info.client_id, "device sign-in refused: {e}");
                ConnectRefusal::BadCredentials
            })?;
        if is_reserved_product_key(&sign_in.product_key) {
            // Only a device stored by an older version can have one; its topics would be
            // another product's, so it cannot sign in until it is registered under another key.
            tracing::warn!(peer = %info.peer, product_key = %sign_in.product_key, device_name = %sign_in.device_name, "device sign-in refused: the product key is reserved ({}); delete the device and register it under another product key", RESERVED_PRODUCT_KEYS.join(", "));
            return Err(ConnectRefusal::NotAuthorized);
        }
        let known = self
            .registry
            .lookup(&sign_in.product_key, &sign_in.device_name);
        if !known.is_some_and(|d| sign_in.verify(&d.secret)) {
            tracing::info!(peer = %info.peer, product_key = %sign_in.product_key, device_name = %sign_in.device_name, "device sign-in refused: unknown device or wrong signature");
            return Err(ConnectRefusal::BadCredentials);
        }
        self.registry
            .session_opened(&sign_in.product_key, &sign_in.device_name);
        Ok(Some(DeviceIdentity {
            product_key: sign_in.product_key,
            device_name: sign_in.device_name,
        }))
    }

    fn may_publish(&self, session: &SessionInfo, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        match &session.identity {
            Some(id) => is_own(&levels, &id.product_key, &id.device_name),
            None => self.anonymous_may_use(topic),
        }
    }

    fn may_subscribe(&self, session: &SessionInfo, filter: &str) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        match &session.identity {
            Some(id) => is_own(&levels, &id.product_key, &id.device_name),
            None => self.anonymous_may_use(filter),
        }
    }

    fn on_disconnect(&self, session: &SessionInfo) {
        if let Some(id) = &session.identity {
            self.registry
                .session_closed(&id.product_key, &id.device_name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        s.split('/').collect()
    }

    #[test]
    fn own_topics_are_the_devices_own_and_nothing_else() {
        // Proves the device ACL: own custom, sys and OTA topics pass (as names and as filters
        // with wildcards after the device name); another device's, wildcards in the product or
        // device level, the bare prefix and status topics do not.
        for ok in [
            "/pk/dev/user/update",
            "/pk/dev/user/#",
            "/sys/pk/dev/thing/event/property/post",
            "/sys/pk/dev/thing/event/property/post_reply",
            "/sys/pk/dev/#",
            "/ota/device/inform/pk/dev",
            "/ext/rrpc/123/pk/dev/user/get",
            "/ext/rrpc/+/pk/dev/user/get",
        ] {
            assert!(is_own(&split(ok), "pk", "dev"), "{ok}");
        }
        for bad in [
            "/pk/other/user/update",
            "/pk/+/user/update",
            "/+/dev/user/update",
            "/pk/dev",
            "/sys/pk/+/thing/event/property/post",
            "#",
            "/#",
            "/as/mqtt/status/pk/dev",
            "pk/dev/user/update",
            "/ota/device/#",
            "/ext/rrpc/123/pk/other/user/get",
            "/ext/rrpc/#",
            "/ext/rrpc/123/pk/dev",
        ] {
            assert!(!is_own(&split(bad), "pk", "dev"), "{bad}");
        }
        // A reserved product key owns nothing, so product `sys` never reaches `/sys/a1pk/...`.
        for (pk, dn, topic) in [
            ("sys", "a1pk", "/sys/a1pk/dev1/thing/event/property/post"),
            ("sys", "a1pk", "/sys/a1pk/#"),
            ("ota", "device", "/ota/device/inform/a1pk/dev1"),
            ("as", "mqtt", "/as/mqtt/status/a1pk/dev1"),
        ] {
            assert!(!is_own(&split(topic), pk, dn), "{pk}/{dn}: {topic}");
        }
    }

    #[test]
    fn could_match_reads_wildcards() {
        // Proves the prefix test behind the anonymous rules.
        let status = STATUS_PREFIX.map(Some);
        assert!(could_match(&split("/as/mqtt/status/pk/dev"), &status));
        assert!(could_match(&split("#"), &status));
        assert!(could_match(&split("/+/mqtt/#"), &status));
        assert!(!could_match(&split("/as/mqtt/other/x"), &status));
        assert!(!could_match(&split("alerts"), &status));
    }

    #[tokio::test]
    async fn anonymous_clients_keep_away_from_products_and_status() {
        // Proves the anonymous rules: with nothing registered anything but status topics goes;
        // once `pk` is registered its topics, and wildcards that could reach them, are refused
        // while unregistered products' topics still pass.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), Default::default()).unwrap();
        let reg = Arc::new(DeviceRegistry::load(store.clone()).await.unwrap());
        let policy = DevicePolicy::new(reg.clone(), false);
        assert!(policy.anonymous_may_use("/pk/dev/user/update"));
        assert!(policy.anonymous_may_use("/+/+/user/get"));
        // `#` could reach the status topics.
        assert!(!policy.anonymous_may_use("#"));
        assert!(!policy.anonymous_may_use("/as/mqtt/status/pk/dev"));
        assert!(!policy.anonymous_may_use("/as/#"));
        reg.create("pk", "dev", Default::default()).await.unwrap();
        for bad in [
            "/pk/dev/user/update",
            "/pk/other/user/get",
            "/sys/pk/dev/thing/event/property/post",
            "/+/dev/user/update",
            "#",
            "/#",
            "/sys/+/dev/x",
            "/ota/device/inform/pk/dev",
            "/+/+/user/get",
        ] {
            assert!(!policy.anonymous_may_use(bad), "{bad}");
        }
        for ok in [
            "/other/dev/user/update",
            "/sys/other/dev/thing/event/property/post",
            "alerts/x",
            "/other/+/user/#",
        ] {
            assert!(policy.anonymous_may_use(ok), "{ok}");
        }
        store.close().await.unwrap();
    }
}
