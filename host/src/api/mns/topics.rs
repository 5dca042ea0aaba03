//! MNS topic, publish and subscription operations over the store's topic functions.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::{check_name, denied, MnsError, NameKind};
use super::xml::{
    number, to_xml, MessageReq, SentResp, SubscriptionReq, SubscriptionResp, SubscriptionUrl,
    SubscriptionsResp, TopicReq, TopicResp, TopicUrl, TopicsResp, UserProperties, XmlBody, XMLNS,
    XML_HEADERS,
};
use super::{base_url, check_logging, page, seconds, MnsQuery, QUEUE_ENDPOINT_PREFIX};
use crate::api::auth::{deny_queue, Caller};
use crate::api::policy::Permission;
use crate::api::AppState;
use crate::store::{
    ContentFormat, Endpoint, HttpPush, NotifyStrategy, PublishRequest, SigningMode, StoreError,
    SubscriptionInfo, SubscriptionSpec, TopicInfo,
};

/// A topic keeps messages waiting for HTTP delivery for a day, which MNS calls the
/// topic's MessageRetentionPeriod.
const TOPIC_RETENTION_SECONDS: u32 = 86_400;

fn xml_ok(status: StatusCode, body: String) -> Response {
    (status, XML_HEADERS, body).into_response()
}

/// Checks a `<Topic>` document: sluice topics have no settings of their own, so a
/// MaximumMessageSize other than the server's cap, or logging, is refused rather than ignored.
fn check_topic(req: &TopicReq, cap: u32) -> Result<(), MnsError> {
    check_logging(&req.logging_enabled)?;
    if let Some(size) = number::<u32>("MaximumMessageSize", &req.maximum_message_size)? {
        if size != cap {
            return Err(MnsError::invalid(
                "MaximumMessageSize",
                format!(
                    "{size}: sluice topics take the server's message size cap ({cap} bytes, \
                     ); it is not set per topic"
                ),
            ));
        }
    }
    Ok(())
}

fn topic_resp(info: TopicInfo, url: Option<String>, root: bool, cap: u32) -> TopicResp {
    TopicResp {
        xmlns: root.then_some(XMLNS),
        topic_url: url,
        topic_name: info.name,
        create_time: seconds(info.create_time_ms),
        last_modify_time: seconds(info.create_time_ms),
        maximum_message_size: cap,
        message_retention_period: TOPIC_RETENTION_SECONDS,
        // Messages fan out in the publish's commit; a topic holds none of its own.
        message_count: 0,
        logging_enabled: "False",
    }
}

/// CreateTopic (`201` + `Location`, `204` when it exists) or, with `?metaoverride=true`,
/// SetTopicAttributes (`204`).
pub async fn create_or_set(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    q: MnsQuery,
    headers: HeaderMap,
    body: XmlBody,
) -> Result<Response, MnsError> {
    let req: TopicReq = body.parse("Topic")?;
    check_topic(&req, state.store.size_cap())?;
    if q.flag("metaoverride") {
        state.store.get_topic(&topic).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    check_name(NameKind::Topic, &topic)?;
    let created = state.store.create_topic(&topic).await?;
    let url = format!("{}/topics/{topic}", base_url(&headers));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    };
    Ok((status, [(header::LOCATION, url)]).into_response())
}

/// GetTopicAttributes.
pub async fn get_attributes(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, MnsError> {
    let info = state.store.get_topic(&topic).await?;
    let doc = topic_resp(info, None, true, state.store.size_cap());
    Ok(xml_ok(StatusCode::OK, to_xml(&doc)))
}

/// DeleteTopic: `204`; `404 TopicNotExist` when there is none.
pub async fn delete(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, MnsError> {
    if !state.store.delete_topic(&topic).await? {
        return Err(StoreError::TopicNotExist { name: topic }.into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// ListTopic, with the paging headers of ListQueue.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, MnsError> {
    let (infos, next) = page(state.store.list_topics().await?, |i| &i.name, &headers)?;
    let base = base_url(&headers);
    let url = |n: &str| format!("{base}/topics/{n}");
    let cap = state.store.size_cap();
    let body = if super::with_meta(&headers) {
        to_xml(&TopicsResp {
            xmlns: XMLNS,
            topics: infos
                .into_iter()
                .map(|i| {
                    let u = url(&i.name);
                    topic_resp(i, Some(u), false, cap)
                })
                .collect(),
            next_marker: next,
        })
    } else {
        to_xml(&TopicsResp {
            xmlns: XMLNS,
            topics: infos
                .iter()
                .map(|i| TopicUrl { url: url(&i.name) })
                .collect(),
            next_marker: next,
        })
    };
    Ok(xml_ok(StatusCode::OK, body))
}

/// PublishMessage: `<Message>` with MessageBody, optional MessageTag and UserProperties (the
/// message's attributes); `201` after the commit that also fans it out to queue subscriptions.
pub async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    body: XmlBody,
) -> Result<Response, MnsError> {
    let m: MessageReq = body.parse("Message")?;
    let text = m.message_body.ok_or_else(|| {
        MnsError::invalid("MessageBody", "missing: a message needs a MessageBody")
    })?;
    let request = PublishRequest {
        body: text.into_bytes().into(),
        tag: m.message_tag,
        attributes: m
            .user_properties
            .map(UserProperties::into_attributes)
            .unwrap_or_default(),
    };
    let published = state.store.publish(&topic, request).await?;
    let doc = SentResp {
        xmlns: Some(XMLNS),
        message_id: published.id.to_string(),
        message_body_md5: published.body_md5,
    };
    Ok(xml_ok(StatusCode::CREATED, to_xml(&doc)))
}

fn parse_strategy(s: &str) -> Result<NotifyStrategy, MnsError> {
    match s.trim() {
        "BACKOFF_RETRY" => Ok(NotifyStrategy::BackoffRetry),
        "EXPONENTIAL_DECAY_RETRY" => Ok(NotifyStrategy::ExponentialDecayRetry),
        other => Err(MnsError::invalid(
            "NotifyStrategy",
            format!("`{other}`: use BACKOFF_RETRY or EXPONENTIAL_DECAY_RETRY"),
        )),
    }
}

fn strategy_name(s: NotifyStrategy) -> &'static str {
    match s {
        NotifyStrategy::BackoffRetry => "BACKOFF_RETRY",
        NotifyStrategy::ExponentialDecayRetry => "EXPONENTIAL_DECAY_RETRY",
    }
}

fn format_name(f: ContentFormat) -> &'static str {
    match f {
        ContentFormat::Simplified => "SIMPLIFIED",
        ContentFormat::Json => "JSON",
        ContentFormat::Xml => "XML",
    }
}

/// MNS's `400 EndpointInvalid`: a subscription's Endpoint that is missing, not a queue or
/// http(s) URL, or an address the egress rules refuse.
fn endpoint_invalid(message: impl Into<String>) -> MnsError {
    MnsError::new(
        StatusCode::BAD_REQUEST,
        "EndpointInvalid",
        format!("invalid Endpoint: {}", message.into()),
    )
}

/// The queue name of an MNS queue endpoint `acs:mns:{region}:{account}:queues/{name}`.
fn queue_of_endpoint(endpoint: &str) -> Result<Option<String>, MnsError> {
    let Some(rest) = endpoint.strip_prefix(QUEUE_ENDPOINT_PREFIX) else {
        return Ok(None);
    };
    rest.rsplit_once(":queues/")
        .map(|(_, name)| Some(name.to_string()))
        .ok_or_else(|| {
            endpoint_invalid(format!(
                "`{endpoint}`: a queue endpoint is acs:mns:REGION:ACCOUNT:queues/NAME"
            ))
        })
}

/// The subscription a `<Subscription>` document asks for.
fn spec_of(req: SubscriptionReq) -> Result<SubscriptionSpec, MnsError> {
    let endpoint = req
        .endpoint
        .ok_or_else(|| endpoint_invalid("missing: a queue or an http(s) URL"))?;
    let strategy = req
        .notify_strategy
        .as_deref()
        .map(parse_strategy)
        .transpose()?;
    let format = req.notify_content_format.as_deref().map(str::trim);
    let endpoint = if let Some(queue) = queue_of_endpoint(&endpoint)? {
        if format.is_some_and(|f| f != "SIMPLIFIED") {
            return Err(MnsError::invalid(
                "NotifyContentFormat",
                "queue subscriptions of sluice deliver the message body as published \
                 (SIMPLIFIED)",
            ));
        }
        Endpoint::Queue(queue)
    } else if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        let mut push = HttpPush::new(endpoint);
        // An MNS application verifies MNS signatures: pushes of subscriptions made on this face
        // carry them (docs/message-service.md, "Signing").
        push.signing = SigningMode::Mns;
        if let Some(s) = strategy {
            push.strategy = s;
        }
        push.format = match format {
            None | Some("XML") => ContentFormat::Xml,
            Some("JSON") => ContentFormat::Json,
            Some("SIMPLIFIED") => ContentFormat::Simplified,
            Some(other) => {
                return Err(MnsError::invalid(
                    "NotifyContentFormat",
                    format!("`{other}`: use XML, JSON or SIMPLIFIED"),
                ))
            }
        };
        Endpoint::Http(push)
    } else {
        return Err(endpoint_invalid(format!(
            "`{endpoint}`: use acs:mns:REGION:ACCOUNT:queues/NAME for a queue or an http(s):// \
             URL"
        )));
    };
    Ok(SubscriptionSpec {
        endpoint,
        filter_tag: req.filter_tag.filter(|t| !t.is_empty()),
        base64_body: false,
    })
}

/// Subscribe (`201` + `Location`; `204` when the same subscription exists; `409
/// SubscriptionAlreadyExist` when a different one does) or, with `?metaoverride=true`,
/// SetSubscriptionAttributes. Subscribing a queue needs `send` on that queue too; an HTTP
/// endpoint the egress policy refuses is a `400 EndpointInvalid`.
pub async fn subscribe_or_set(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((topic, name)): Path<(String, String)>,
    q: MnsQuery,
    headers: HeaderMap,
    body: XmlBody,
) -> Result<Response, MnsError> {
    let req: SubscriptionReq = body.parse("Subscription")?;
    if q.flag("metaoverride") {
        return set_subscription(&state, &topic, &name, req).await;
    }
    check_name(NameKind::Subscription, &name)?;
    let spec = spec_of(req)?;
    if let Endpoint::Http(push) = &spec.endpoint {
        state
            .push_egress
            .check_new_endpoint(&push.url)
            .map_err(endpoint_invalid)?;
    }
    if let Endpoint::Queue(queue) = &spec.endpoint {
        if let Some(d) = deny_queue(&caller, queue, Permission::Send) {
            return Err(denied(d.status, d.code, d.message));
        }
    }
    let url = format!("{}/topics/{topic}/subscriptions/{name}", base_url(&headers));
    if let Ok(existing) = state.store.get_subscription(&topic, &name).await {
        if same_but_signing(&existing.spec, &spec) {
            // Stored with another signing mode (one made before modes existed signs with
            // Standard Webhooks): the same subscription, kept as it is.
            return Ok((StatusCode::NO_CONTENT, [(header::LOCATION, url)]).into_response());
        }
    }
    let created = state.store.create_subscription(&topic, &name, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    };
    Ok((status, [(header::LOCATION, url)]).into_response())
}

/// Whether two specs differ at most in their HTTP signing mode.
fn same_but_signing(stored: &SubscriptionSpec, wanted: &SubscriptionSpec) -> bool {
    match (&stored.endpoint, &wanted.endpoint) {
        (Endpoint::Http(a), Endpoint::Http(b)) => {
            let mut a = a.clone();
            a.signing = b.signing;
            a == *b
                && stored.filter_tag == wanted.filter_tag
                && stored.base64_body == wanted.base64_body
        }
        _ => false,
    }
}

/// SetSubscriptionAttributes: MNS lets only NotifyStrategy change. It applies to HTTP
/// subscriptions (queue endpoints are not retried); the same strategy again is a no-op.
async fn set_subscription(
    state: &AppState,
    topic: &str,
    name: &str,
    req: SubscriptionReq,
) -> Result<Response, MnsError> {
    let info = state.store.get_subscription(topic, name).await?;
    if let Some(wanted) = req
        .notify_strategy
        .as_deref()
        .map(parse_strategy)
        .transpose()?
    {
        match &info.spec.endpoint {
            Endpoint::Http(_) => state.store.set_push_strategy(topic, name, wanted).await?,
            _ if wanted == NotifyStrategy::default() => {}
            _ => {
                return Err(MnsError::invalid(
                    "NotifyStrategy",
                    format!(
                        "subscription `{name}` pushes to a queue, which is never retried; \
                         only HTTP subscriptions take {}",
                        strategy_name(wanted)
                    ),
                ))
            }
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn endpoint_text(info: &SubscriptionInfo) -> (String, &'static str, &'static str) {
    match &info.spec.endpoint {
        Endpoint::Queue(q) => (
            format!("acs:mns:local:sluice:queues/{q}"),
            strategy_name(NotifyStrategy::default()),
            "SIMPLIFIED",
        ),
        Endpoint::Http(p) => (
            p.url.clone(),
            strategy_name(p.strategy),
            format_name(p.format),
        ),
    }
}

/// GetSubscriptionAttributes.
pub async fn get_subscription(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Response, MnsError> {
    let info = state.store.get_subscription(&topic, &name).await?;
    let (endpoint, strategy, format) = endpoint_text(&info);
    let doc = SubscriptionResp {
        xmlns: XMLNS,
        topic_owner: "sluice".into(),
        topic_name: info.topic.clone(),
        subscription_name: info.name.clone(),
        endpoint,
        notify_strategy: strategy.into(),
        notify_content_format: format.into(),
        filter_tag: info.spec.filter_tag.clone(),
        create_time: seconds(info.create_time_ms),
        last_modify_time: seconds(info.create_time_ms),
    };
    Ok(xml_ok(StatusCode::OK, to_xml(&doc)))
}

/// Unsubscribe: `204`; `404 SubscriptionNotExist` when there is none.
pub async fn unsubscribe(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Response, MnsError> {
    if !state.store.delete_subscription(&topic, &name).await? {
        return Err(StoreError::SubscriptionNotExist { topic, name }.into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// ListSubscriptionByTopic, with the paging headers of ListQueue.
pub async fn list_subscriptions(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MnsError> {
    let subs = state.store.list_subscriptions(&topic).await?;
    let (subs, next) = page(subs, |s| &s.name, &headers)?;
    let base = base_url(&headers);
    let doc = SubscriptionsResp {
        xmlns: XMLNS,
        subscriptions: subs
            .iter()
            .map(|s| SubscriptionUrl {
                url: format!("{base}/topics/{topic}/subscriptions/{}", s.name),
            })
            .collect(),
        next_marker: next,
    };
    Ok(xml_ok(StatusCode::OK, to_xml(&doc)))
}
