//! MNS queue and message operations over the store's queue functions.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{check_name, store_code, MnsError, NameKind};
use super::xml::{
    self, message_text, number, to_xml, xml_text, ChangeVisibilityResp, DeleteErrorResp,
    DeleteErrorsResp, MessageReq, MessageResp, MessagesReq, MessagesResp, QueueReq, QueueResp,
    QueueUrl, QueuesResp, ReceiptHandlesReq, SentResp, UserProperties, XmlBody, XMLNS, XML_HEADERS,
};
use super::{base_url, check_logging, page, seconds, MnsQuery};
use crate::api::AppState;
use crate::store::{Message, QueueAttributesPatch, QueueInfo, SendRequest, StoreError};

fn xml_ok(status: StatusCode, body: String) -> Response {
    (status, XML_HEADERS, body).into_response()
}

/// The attributes a `<Queue>` document gives (its elements are text); names the element on a
/// bad value. MNS has no dead-letter queue: those stay as they are.
fn queue_patch(req: &QueueReq) -> Result<QueueAttributesPatch, MnsError> {
    check_logging(&req.logging_enabled)?;
    Ok(QueueAttributesPatch {
        delay_seconds: number("DelaySeconds", &req.delay_seconds)?,
        maximum_message_size: number("MaximumMessageSize", &req.maximum_message_size)?,
        message_retention_period: number("MessageRetentionPeriod", &req.message_retention_period)?,
        visibility_timeout: number("VisibilityTimeout", &req.visibility_timeout)?,
        polling_wait_seconds: number("PollingWaitSeconds", &req.polling_wait_seconds)?,
        dead_letter_queue: None,
        max_receive_count: None,
    })
}

fn queue_resp(info: QueueInfo, url: Option<String>, root: bool) -> QueueResp {
    QueueResp {
        xmlns: root.then_some(XMLNS),
        queue_url: url,
        queue_name: info.name,
        create_time: seconds(info.create_time_ms),
        last_modify_time: seconds(info.create_time_ms),
        delay_seconds: info.attributes.delay_seconds,
        maximum_message_size: info.attributes.maximum_message_size,
        message_retention_period: info.attributes.message_retention_period,
        visibility_timeout: info.attributes.visibility_timeout,
        polling_wait_seconds: info.attributes.polling_wait_seconds,
        active_messages: info.active_messages,
        inactive_messages: info.inactive_messages,
        delay_messages: info.delayed_messages,
        logging_enabled: "False",
    }
}

/// CreateQueue (`201` + `Location`, `204` when it exists with the same attributes, `409
/// QueueAlreadyExist` when different) or, with `?metaoverride=true`, SetQueueAttributes
/// (`204`; the attributes given change, the others stay).
pub async fn create_or_set(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    q: MnsQuery,
    headers: HeaderMap,
    body: XmlBody,
) -> Result<Response, MnsError> {
    let req: QueueReq = body.parse("Queue")?;
    if q.flag("metaoverride") {
        let current = state.store.get_queue(&queue).await?.attributes;
        state
            .store
            .set_queue_attributes(&queue, queue_patch(&req)?.apply(current))
            .await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    check_name(NameKind::Queue, &queue)?;
    let created = state
        .store
        .create_queue(&queue, queue_patch(&req)?.attributes())
        .await?;
    let url = format!("{}/queues/{queue}", base_url(&headers));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    };
    Ok((status, [(header::LOCATION, url)]).into_response())
}

/// GetQueueAttributes.
pub async fn get_attributes(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Response, MnsError> {
    let info = state.store.get_queue(&queue).await?;
    Ok(xml_ok(
        StatusCode::OK,
        to_xml(&queue_resp(info, None, true)),
    ))
}

/// DeleteQueue: `204`; `404 QueueNotExist` when there is none (as the native API).
pub async fn delete(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Response, MnsError> {
    if !state.store.delete_queue(&queue).await? {
        return Err(StoreError::QueueNotExist { name: queue }.into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// ListQueue, with `x-mns-prefix`, `x-mns-marker`, `x-mns-ret-number` and `x-mns-with-meta`.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, MnsError> {
    let (infos, next) = page(state.store.list_queues().await?, |i| &i.name, &headers)?;
    let base = base_url(&headers);
    let url = |n: &str| format!("{base}/queues/{n}");
    let body = if super::with_meta(&headers) {
        to_xml(&QueuesResp {
            xmlns: XMLNS,
            queues: infos
                .into_iter()
                .map(|i| {
                    let u = url(&i.name);
                    queue_resp(i, Some(u), false)
                })
                .collect(),
            next_marker: next,
        })
    } else {
        to_xml(&QueuesResp {
            xmlns: XMLNS,
            queues: infos
                .iter()
                .map(|i| QueueUrl { url: url(&i.name) })
                .collect(),
            next_marker: next,
        })
    };
    Ok(xml_ok(StatusCode::OK, body))
}

fn send_request(m: MessageReq, i: Option<usize>) -> Result<SendRequest, MnsError> {
    let at = |field: &str| match i {
        Some(i) => format!("Message[{i}].{field}"),
        None => field.to_string(),
    };
    let body = m.message_body.ok_or_else(|| {
        MnsError::invalid(&at("MessageBody"), "missing: a message needs a MessageBody")
    })?;
    Ok(SendRequest {
        body: body.into_bytes().into(),
        delay_seconds: number(&at("DelaySeconds"), &m.delay_seconds)?,
        priority: number(&at("Priority"), &m.priority)?,
        tag: m.message_tag,
        attributes: m
            .user_properties
            .map(UserProperties::into_attributes)
            .unwrap_or_default(),
    })
}

/// SendMessage (`<Message>`) or BatchSendMessage (`<Messages>`, 1–16, one commit): `201` with
/// the id and body MD5 of each.
pub async fn send(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    body: XmlBody,
) -> Result<Response, MnsError> {
    if body.root_name().as_deref() == Some("Messages") {
        let batch: MessagesReq = body.parse("Messages")?;
        let requests = batch
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| send_request(m, Some(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let sent = state.store.send_batch(&queue, requests).await?;
        let doc = MessagesResp {
            xmlns: XMLNS,
            messages: sent
                .into_iter()
                .map(|s| SentResp {
                    xmlns: None,
                    message_id: s.id.to_string(),
                    message_body_md5: s.body_md5,
                })
                .collect(),
        };
        return Ok(xml_ok(StatusCode::CREATED, to_xml(&doc)));
    }
    let one: MessageReq = body.parse("Message")?;
    let sent = state.store.send(&queue, send_request(one, None)?).await?;
    let doc = SentResp {
        xmlns: Some(XMLNS),
        message_id: sent.id.to_string(),
        message_body_md5: sent.body_md5,
    };
    Ok(xml_ok(StatusCode::CREATED, to_xml(&doc)))
}

/// A stored message as MNS shows it. A body that is UTF-8 text XML can carry is returned as
/// stored; any other body (not UTF-8, or with characters XML 1.0 cannot carry, such as U+0001
/// sent through `/v1/`) as base64 with `<MessageEncoding>base64</MessageEncoding>` beside it,
/// as the push formats do. Encoding keeps every byte (refusing such bodies at send could not
/// cover bodies that rule outputs and topics already stored), keeps the document well-formed
/// (one bad body would otherwise fail a whole batch in the SDK) and is what an SDK consumer
/// in its default mode (`set_encoding(True)`) decodes to the original bytes; SDKs ignore the
/// extra element.
fn message_resp(m: Message, root: bool) -> MessageResp {
    let (body, base64) = message_text(&m.body, true);
    let peeked = m.receipt_handle.is_none();
    MessageResp {
        xmlns: root.then_some(XMLNS),
        message_id: m.id.to_string(),
        receipt_handle: m.receipt_handle,
        message_body_md5: m.body_md5,
        message_body: body,
        message_encoding: base64.then_some("base64"),
        enqueue_time: m.enqueue_time_ms,
        next_visible_time: (!peeked).then_some(m.next_visible_time_ms),
        first_dequeue_time: m.first_dequeue_time_ms.unwrap_or(0),
        dequeue_count: m.dequeue_count,
        priority: m.priority,
        message_tag: m.tag.map(|t| xml_text(&t).into_owned()),
        user_properties: UserProperties::from_attributes(&m.attributes.to_map()),
    }
}

/// (Batch)ReceiveMessage with `waitseconds` (0–30) and `numOfMessages` (1–16), or with
/// `peekonly=true` (Batch)PeekMessage. No message after the wait is MNS's `404
/// MessageNotExist` with MNS's own message, `Message not exist.`. A request with `numOfMessages` is a batch and answers `<Messages>`.
pub async fn receive_or_peek(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    q: MnsQuery,
) -> Result<Response, MnsError> {
    let batch = q.number::<u32>("numOfMessages")?;
    let max = batch.unwrap_or(1) as usize;
    let messages = if q.peek_only() {
        state.store.peek(&queue, max).await?
    } else {
        let wait = q.number::<u64>("waitseconds")?.map(Duration::from_secs);
        state.store.receive(&queue, max, wait).await?
    };
    if messages.is_empty() {
        return Err(MnsError::new(
            StatusCode::NOT_FOUND,
            "MessageNotExist",
            "Message not exist.",
        ));
    }
    let body = if batch.is_some() {
        to_xml(&MessagesResp {
            xmlns: XMLNS,
            messages: messages
                .into_iter()
                .map(|m| message_resp(m, false))
                .collect(),
        })
    } else {
        let m = messages.into_iter().next().expect("not empty");
        to_xml(&message_resp(m, true))
    };
    Ok(xml_ok(StatusCode::OK, body))
}

/// DeleteMessage (`?ReceiptHandle=`) or BatchDeleteMessage (`<ReceiptHandles>`, 1–16): `204`
/// when every handle worked; a batch with failures answers `404` with one `<Error>` per failed
/// handle (the others are deleted), as MNS does, each with the code a DeleteMessage of that
/// handle would answer. No handle at all is MNS's `400 MissingReceiptHandle`.
pub async fn delete_messages(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    q: MnsQuery,
    body: XmlBody,
) -> Result<Response, MnsError> {
    if let Some(handle) = q.get("receipthandle") {
        state.store.delete(&queue, handle).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let req: ReceiptHandlesReq = body.parse("ReceiptHandles")?;
    if req.handles.is_empty() {
        return Err(missing_handle());
    }
    let results = state
        .store
        .delete_batch(&queue, req.handles.clone())
        .await?;
    let errors: Vec<DeleteErrorResp> = req
        .handles
        .into_iter()
        .zip(results)
        .filter_map(|(handle, r)| {
            r.err().map(|e| DeleteErrorResp {
                error_code: store_code(&e).1.to_string(),
                error_message: e.to_string(),
                receipt_handle: handle,
            })
        })
        .collect();
    if errors.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let doc = DeleteErrorsResp {
        xmlns: XMLNS,
        errors,
    };
    Ok(xml_ok(StatusCode::NOT_FOUND, to_xml(&doc)))
}

fn missing_handle() -> MnsError {
    MnsError::new(
        StatusCode::BAD_REQUEST,
        "MissingReceiptHandle",
        "ReceiptHandle is required: give ?ReceiptHandle= (or a <ReceiptHandles> document to \
         BatchDeleteMessage)",
    )
}

/// ChangeMessageVisibility: `?ReceiptHandle=&VisibilityTimeout=` (1–43200 s); answers the new
/// handle and the next visible time (ms). Without either parameter: MNS's `400
/// MissingReceiptHandle` / `400 MissingVisibilityTimeout`.
pub async fn change_visibility(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    q: MnsQuery,
) -> Result<Response, MnsError> {
    let handle = q.get("receipthandle").ok_or_else(missing_handle)?;
    let seconds = q.number::<u32>("VisibilityTimeout")?.ok_or_else(|| {
        MnsError::new(
            StatusCode::BAD_REQUEST,
            "MissingVisibilityTimeout",
            "VisibilityTimeout is required: seconds, 1 to 43200",
        )
    })?;
    let changed = state
        .store
        .change_visibility(&queue, handle, seconds)
        .await?;
    let doc = ChangeVisibilityResp {
        xmlns: XMLNS,
        receipt_handle: changed.receipt_handle,
        next_visible_time: changed.next_visible_time_ms,
    };
    Ok(xml_ok(StatusCode::OK, xml::to_xml(&doc)))
}
