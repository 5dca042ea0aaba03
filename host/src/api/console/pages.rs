//! The HTML of each console page: a shared layout (navigation in the order of the flow, the
//! signed-in key, sign-out) and each page's static structure — forms with a label on every
//! control, and lists with their empty state. The data comes from `/v1/` through
//! `console.js`, so what a page shows is what the key may read.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The pages, in the order of the flow (device -> rule -> topic -> queue -> application).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Rates, depths, errors.
    Overview,
    /// Rules, the SQL editor and the live test panel.
    Rules,
    /// Topics and their subscriptions.
    Topics,
    /// Queues: counts, peek, send, purge.
    Queues,
    /// Server-sent events of a topic filter, a rule or a queue.
    Tail,
    /// The device registry.
    Devices,
    /// Access keys.
    Keys,
}

const ALL: [Page; 7] = [
    Page::Overview,
    Page::Rules,
    Page::Topics,
    Page::Queues,
    Page::Tail,
    Page::Devices,
    Page::Keys,
];

impl Page {
    /// The page at `/console/{path}`.
    pub fn from_path(path: &str) -> Option<Page> {
        ALL.into_iter().find(|p| p.path() == path)
    }

    fn path(self) -> &'static str {
        match self {
            Page::Overview => "",
            Page::Rules => "rules",
            Page::Topics => "topics",
            Page::Queues => "queues",
            Page::Tail => "tail",
            Page::Devices => "devices",
            Page::Keys => "keys",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Page::Overview => "Overview",
            Page::Rules => "Rules",
            Page::Topics => "Topics",
            Page::Queues => "Queues",
            Page::Tail => "Live tail",
            Page::Devices => "Devices",
            Page::Keys => "Access keys",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Page::Overview => OVERVIEW,
            Page::Rules => RULES,
            Page::Topics => TOPICS,
            Page::Queues => QUEUES,
            Page::Tail => TAIL,
            Page::Devices => DEVICES,
            Page::Keys => KEYS,
        }
    }
}

/// Escapes text for HTML element content and attribute values (`& < > " '`).
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// Scripts and styles from this server only, no framing: an injected string can neither run
/// inline script nor load anything from elsewhere. (Referrer policy `same-origin`, not
/// `no-referrer`: with the latter the browser sends `Origin: null` on the sign-in form, which the
/// sign-in's cross-site check must refuse.)
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · sluice console</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">",
        escape(title)
    )
}

fn layout(
    current: Option<Page>,
    title: &str,
    body: &str,
    csrf: &str,
    key_id: &str,
    admin: bool,
) -> String {
    let mut nav = String::new();
    for p in ALL {
        let aria = if Some(p) == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        nav.push_str(&format!(
            "<a href=\"/console/{}\"{aria}>{}</a>",
            p.path(),
            p.title()
        ));
    }
    let role = if admin { "admin key" } else { "key" };
    format!(
        "{head}<meta name=\"csrf-token\" content=\"{csrf}\"></head>\
         <body data-page=\"{page}\">\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header class=\"top\"><a class=\"brand\" href=\"/console/\">sluice</a>\
         <nav aria-label=\"Main\">{nav}</nav>\
         <span class=\"who\" title=\"signed in with this access key\">{role} <code>{key}</code></span>\
         <button type=\"button\" id=\"sign-out\">Sign out</button></header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{title}</h1>\
         <div id=\"flash\" role=\"status\" aria-live=\"polite\"></div>{body}</main>\
         <script src=\"/console/assets/console.js\" defer></script></body></html>",
        head = head(title),
        csrf = escape(csrf),
        page = current.map(Page::path).map(|p| if p.is_empty() { "overview" } else { p }).unwrap_or("none"),
        key = escape(key_id),
        title = escape(title),
    )
}

/// A page for a signed-in browser.
pub fn render(page: Page, csrf: &str, key_id: &str, admin: bool) -> Response {
    html(
        StatusCode::OK,
        layout(Some(page), page.title(), page.body(), csrf, key_id, admin),
    )
}

/// The page for an unknown console path.
pub fn not_found(csrf: &str, key_id: &str, admin: bool) -> String {
    layout(
        None,
        "Not found",
        "<p>No console page here. Pick one from the navigation above.</p>",
        csrf,
        key_id,
        admin,
    )
}

/// The sign-in page, with an error when the last attempt failed.
pub fn sign_in(error: Option<&str>, status: StatusCode) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    html(
        status,
        format!(
            "{head}</head><body data-page=\"login\"><main id=\"main\" class=\"sign-in\">\
             <h1>sluice console</h1>\
             <p>Sign in with an access key. <code>sluice serve</code> writes its admin key to \
             <code>~/.config/sluice/credentials.toml</code>; <code>sluice key create</code> makes \
             more, each limited by its policy — the console can do only what the key may.</p>\
             {error}\
             <form method=\"post\" action=\"/console/login\">\
             <label for=\"key_id\">Access key id</label>\
             <input id=\"key_id\" name=\"key_id\" autocomplete=\"username\" required autofocus>\
             <label for=\"secret\">Secret</label>\
             <input id=\"secret\" name=\"secret\" type=\"password\" autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form></main></body></html>",
            head = head("Sign in"),
        ),
    )
}

const OVERVIEW: &str = r##"
<section aria-labelledby="now-h"><h2 id="now-h">Now</h2>
<div id="stats" class="cards"><p class="empty">Loading…</p></div></section>
<section aria-labelledby="rates-h"><h2 id="rates-h">Last 15 minutes</h2>
<p class="hint">Messages per second, sampled every 10 s.</p>
<div id="charts" class="charts"></div></section>
<section aria-labelledby="queues-h"><h2 id="queues-h">Queue depths</h2>
<div id="queue-depths"></div></section>
<section aria-labelledby="errors-h"><h2 id="errors-h">Recent errors</h2>
<div id="errors"></div></section>
"##;

const RULES: &str = r##"
<section aria-labelledby="list-h"><h2 id="list-h">All rules</h2>
<div id="rules-list"></div></section>
<section aria-labelledby="edit-h" class="editor"><h2 id="edit-h">Create or update a rule</h2>
<form id="rule-form">
<div class="row">
<div><label for="rule-name">Name</label><input id="rule-name" name="name" required pattern="[A-Za-z0-9_.\-]+" placeholder="overheat"></div>
<div><label for="rule-kind">Source</label><select id="rule-kind" name="kind"><option value="sql">SQL</option><option value="wasm">Wasm module</option></select></div>
<div><label for="rule-data-type">Data type</label><select id="rule-data-type" name="data_type"><option value="json">json</option><option value="binary">binary</option></select></div>
</div>
<div id="sql-source"><label for="rule-sql">SQL</label>
<textarea id="rule-sql" name="sql" rows="6" spellcheck="false" class="code" placeholder="SELECT deviceName() AS device, temperature FROM &quot;/sys/+/+/thing/event/property/post&quot; WHERE temperature > 30"></textarea>
<p id="sql-error" class="error" role="alert" hidden></p></div>
<div id="wasm-source" hidden><div class="row">
<div><label for="rule-wasm">Wasm module (.wasm)</label><input id="rule-wasm" type="file" accept=".wasm,application/wasm"></div>
<div><label for="rule-from">Topic filter it listens on</label><input id="rule-from" placeholder="/pk/+/user/update"></div></div></div>
<div class="row">
<div><label for="rule-actions">Actions, one per line</label><textarea id="rule-actions" rows="2" class="code" placeholder="forward:alerts"></textarea></div>
<div><label for="rule-error-action">Error action</label><input id="rule-error-action" placeholder="forward:rule-errors (optional)"></div>
<div><label for="rule-grant">Grant, one per line</label><textarea id="rule-grant" rows="2" class="code" placeholder="empty: the actions"></textarea></div>
</div>
<div class="buttons"><button type="submit" id="rule-create">Create (stopped)</button>
<button type="button" id="rule-update">Update</button></div>
</form></section>
<section aria-labelledby="test-h" class="editor"><h2 id="test-h">Live test</h2>
<p class="hint">Runs the rule above on a sample message through the same compiler and sandbox as <code>sluice rule eval</code>. Nothing is stored or forwarded.</p>
<form id="test-form"><div class="row">
<div><label for="test-topic">Sample topic</label><input id="test-topic" value="/sys/pk/dev1/thing/event/property/post"></div></div>
<label for="test-payload">Sample payload</label>
<textarea id="test-payload" rows="3" class="code" spellcheck="false">{"temperature": 42}</textarea>
<div class="buttons"><button type="submit" id="test-run">Run test</button></div></form>
<div id="test-output" aria-live="polite"></div></section>
<section aria-labelledby="charts-h"><h2 id="charts-h">Rule charts</h2>
<p class="hint">Pick a rule above (Edit) to see its messages in, out and failed, and its latency.</p>
<div id="rule-charts" class="charts"></div></section>
"##;

const TOPICS: &str = r##"
<section aria-labelledby="new-topic-h" class="editor"><h2 id="new-topic-h">New topic</h2>
<form id="topic-form" class="row">
<div><label for="topic-name">Topic name</label><input id="topic-name" required placeholder="alerts"></div>
<div class="buttons"><button type="submit">Create topic</button></div></form></section>
<section aria-labelledby="new-sub-h" class="editor"><h2 id="new-sub-h">New subscription</h2>
<form id="sub-form"><div class="row">
<div><label for="sub-topic">Topic</label><select id="sub-topic" required></select></div>
<div><label for="sub-name">Subscription name</label><input id="sub-name" required placeholder="alerts-to-q"></div>
<div><label for="sub-type">Endpoint type</label><select id="sub-type"><option value="queue">Queue</option><option value="http">HTTP push</option></select></div>
<div><label for="sub-target">Queue name or URL</label><input id="sub-target" required placeholder="alerts-q"></div>
</div><div class="row">
<div><label for="sub-filter-tag">Filter tag</label><input id="sub-filter-tag" placeholder="optional"></div>
<div><label for="sub-strategy">Retry strategy (HTTP)</label><select id="sub-strategy"><option value="">default</option><option>BACKOFF_RETRY</option><option>EXPONENTIAL_DECAY_RETRY</option></select></div>
<div><label for="sub-format">Format (HTTP)</label><select id="sub-format"><option value="">default</option><option>SIMPLIFIED</option><option>JSON</option><option>XML</option></select></div>
</div>
<div class="buttons"><button type="submit">Subscribe</button></div></form>
<div id="sub-secret" role="status"></div></section>
<section aria-labelledby="topics-h"><h2 id="topics-h">Topics and subscriptions</h2>
<div id="topics-list"></div></section>
"##;

const QUEUES: &str = r##"
<section aria-labelledby="new-queue-h" class="editor"><h2 id="new-queue-h">New queue</h2>
<form id="queue-form" class="row">
<div><label for="queue-name">Queue name</label><input id="queue-name" required placeholder="alerts-q"></div>
<div><label for="queue-dlq">Dead-letter queue</label><input id="queue-dlq" placeholder="optional"></div>
<div class="buttons"><button type="submit">Create queue</button></div></form></section>
<section aria-labelledby="queues-h"><h2 id="queues-h">All queues</h2>
<div id="queues-list"></div></section>
<section aria-labelledby="queue-tools-h" class="editor"><h2 id="queue-tools-h">Messages</h2>
<form id="queue-send-form"><div class="row">
<div><label for="tool-queue">Queue</label><select id="tool-queue"></select></div>
<div class="wide"><label for="send-body">Test message body</label><input id="send-body" value="{&quot;hello&quot;: &quot;sluice&quot;}"></div>
</div><div class="buttons"><button type="submit">Send test message</button>
<button type="button" id="queue-peek">Peek</button>
<button type="button" id="queue-purge" class="danger">Purge…</button></div></form>
<div id="peek-output"></div></section>
"##;

const TAIL: &str = r##"
<form id="tail-form" class="editor"><div class="row">
<div><label for="tail-kind">Follow</label><select id="tail-kind">
<option value="topic">a device topic filter</option><option value="rule">a rule's output</option><option value="queue">a queue</option></select></div>
<div class="wide"><label for="tail-target">Topic filter, rule or queue</label><input id="tail-target" required value="#" list="tail-targets"><datalist id="tail-targets"></datalist></div>
<div><label for="tail-cap">Keep at most (rows)</label><input id="tail-cap" type="number" min="1" max="5000" value="200"></div>
</div><div class="buttons"><button type="submit" id="tail-start">Follow</button>
<button type="button" id="tail-pause" aria-pressed="false">Pause</button>
<button type="button" id="tail-clear">Clear</button>
<span id="tail-status" role="status" aria-live="polite">Not following.</span></div></form>
<div id="tail-rows" aria-live="off"><p class="empty">Nothing yet — pick what to follow and press Follow; messages appear here as they arrive.</p></div>
"##;

const DEVICES: &str = r##"
<section aria-labelledby="new-device-h" class="editor"><h2 id="new-device-h">Register a device</h2>
<form id="device-form" class="row">
<div><label for="device-pk">Product key</label><input id="device-pk" required placeholder="pk"></div>
<div><label for="device-dn">Device name</label><input id="device-dn" required placeholder="dev1"></div>
<div class="buttons"><button type="submit">Register</button></div></form>
<div id="device-secret" role="status"></div></section>
<section aria-labelledby="devices-h"><h2 id="devices-h">Registered devices</h2><div id="devices-list"></div></section>
"##;

const KEYS: &str = r##"
<section aria-labelledby="new-key-h" class="editor"><h2 id="new-key-h">New access key</h2>
<form id="key-form"><div class="row">
<div><label for="key-name">Name</label><input id="key-name" required placeholder="alerts-app"></div>
<div class="wide"><label for="key-allow">Grants, one per line</label><textarea id="key-allow" rows="2" class="code" required placeholder="queues/alerts-q:consume"></textarea></div>
</div><div class="buttons"><button type="submit">Create key</button></div></form>
<div id="key-secret" role="status"></div></section>
<section aria-labelledby="keys-h"><h2 id="keys-h">All keys</h2><div id="keys-list"></div></section>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every control on every page has a label that points at it.
    #[test]
    fn every_control_has_a_label() {
        for p in ALL {
            let body = p.body();
            for tag in ["<input id=\"", "<select id=\"", "<textarea id=\""] {
                for (i, _) in body.match_indices(tag) {
                    let id: String = body[i + tag.len()..]
                        .chars()
                        .take_while(|c| *c != '"')
                        .collect();
                    assert!(
                        body.contains(&format!("<label for=\"{id}\"")),
                        "{:?}: control #{id} has no label",
                        p
                    );
                }
            }
        }
    }

    /// Text from outside is escaped before it reaches the HTML.
    #[test]
    fn escape_covers_html_specials() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;"
        );
    }
}
