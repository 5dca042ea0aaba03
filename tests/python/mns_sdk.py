"""Drives a running sluice with the official MNS Python SDK (`aliyun-mns-sdk`).

Run by the e2e suite (tests/tests/e2e/mns.rs), one scenario per call:

    python3 mns_sdk.py ops  ENDPOINT ACCESS_KEY_ID SECRET   # every operation + error paths
    python3 mns_sdk.py codes ENDPOINT ACCESS_KEY_ID SECRET  # each MNS error code and status
    python3 mns_sdk.py deny ENDPOINT ACCESS_KEY_ID SECRET   # a key limited to queues/allowed-q
    python3 mns_sdk.py flow ENDPOINT ACCESS_KEY_ID SECRET N # read rule output from queues
    python3 mns_sdk.py controls ENDPOINT ACCESS_KEY_ID SECRET QUEUE # bodies XML cannot carry
    python3 mns_sdk.py egress ENDPOINT ACCESS_KEY_ID SECRET URL=ADDRESS...
                                            # HTTP subscriptions to refused addresses: 400

Prints one line per step and `ALL OK` at the end; any failure raises (non-zero exit).
"""

import base64
import hashlib
import json
import sys

from mns import mns_http
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.mns_http import RequestInternal
from mns.queue import Message, QueueMeta
from mns.subscription import SubscriptionMeta
from mns.topic import TopicMessage, TopicMeta


def step(name):
    print("step:", name, flush=True)


# The HTTP status of the SDK's last answer: MNSServerException carries the code, not the status,
# so the SDK's transport is wrapped to keep it.
LAST_STATUS = [None]
_send_request = mns_http.MNSHttp.send_request


def _recording_send_request(self, req_inter):
    resp = _send_request(self, req_inter)
    LAST_STATUS[0] = resp.status
    return resp


mns_http.MNSHttp.send_request = _recording_send_request


def expect_error(code, fn, *args, status=None, **kwargs):
    """Calls fn(*args, **kwargs) and checks it raises the MNS error `code` (and, given, HTTP
    `status`)."""
    LAST_STATUS[0] = None
    try:
        fn(*args, **kwargs)
    except MNSServerException as e:
        assert e.type == code, "expected %s, got %s: %s" % (code, e.type, e.message)
        assert status is None or LAST_STATUS[0] == status, \
            "%s: expected HTTP %s, got %s" % (code, status, LAST_STATUS[0])
        return e
    raise AssertionError("expected %s, the call succeeded" % code)


def md5_upper(data):
    return hashlib.md5(data).hexdigest().upper()


def ops(endpoint, key_id, secret):
    acc = Account(endpoint, key_id, secret)

    step("CreateQueue / GetQueueAttributes / SetQueueAttributes")
    q = acc.get_queue("sdk-q")
    meta = QueueMeta()
    meta.set_visibilitytimeout(5)
    meta.set_polling_wait_seconds(0)
    url = q.create(meta)
    assert url.endswith("/queues/sdk-q"), url
    q.create(meta)  # the same attributes again: 204, no error
    attrs = q.get_attributes()
    assert attrs.visibility_timeout == 5 and attrs.queue_name == "sdk-q", vars(attrs)
    assert attrs.maximum_message_size == 65536 and attrs.delay_seconds == 0
    change = QueueMeta()
    change.set_visibilitytimeout(3)
    q.set_attributes(change)
    assert q.get_attributes().visibility_timeout == 3
    bad = QueueMeta()
    bad.set_visibilitytimeout(43201)
    e = expect_error("InvalidArgument", q.set_attributes, bad)
    assert "visibility_timeout" in e.message and "43200" in e.message, e.message
    assert q.get_attributes().visibility_timeout == 3  # nothing changed
    other = QueueMeta()
    other.set_visibilitytimeout(7)
    expect_error("QueueAlreadyExist", q.create, other)

    step("ListQueue with prefix, paging and meta")
    acc.get_queue("sdk-q2").create(QueueMeta())
    urls, marker = acc.list_queue("sdk-", 1)
    assert len(urls) == 1 and urls[0].endswith("/queues/sdk-q") and marker == "sdk-q2", (urls, marker)
    urls, marker = acc.list_queue("sdk-", 10, marker)
    assert [u.rsplit("/", 1)[1] for u in urls] == ["sdk-q2"] and marker == "", (urls, marker)

    step("SendMessage / ReceiveMessage (SDK base64 both ways) / DeleteMessage")
    sent = q.send_message(Message("hello sdk"))
    assert sent.message_body_md5 == md5_upper(base64.b64encode(b"hello sdk")), sent.message_body_md5
    got = q.receive_message(1)
    assert got.message_body == b"hello sdk", got.message_body
    assert got.message_id == sent.message_id and got.dequeue_count == 1
    assert got.next_visible_time > got.enqueue_time
    q.delete_message(got.receipt_handle)
    q.delete_message(got.receipt_handle)  # twice with the current handle: still fine

    step("raw bodies with set_encoding(False), priority, user properties")
    q.set_encoding(False)
    m = Message('{"t": 1}', priority=1)
    from mns.message_property import MessagePropertyValue
    m.add_user_property("device", MessagePropertyValue.create_string("dev1"))
    sent = q.send_message(m)
    assert sent.message_body_md5 == md5_upper(b'{"t": 1}')
    got = q.receive_message(1)
    assert got.message_body == '{"t": 1}' and got.priority == 1, vars(got)
    props = got.user_properties
    assert props["device"].get_string_value_by_type() == "dev1", props

    step("stale receipt handle after ChangeMessageVisibility")
    changed = q.change_message_visibility(got.receipt_handle, 10)
    assert changed.receipt_handle != got.receipt_handle
    expect_error("MessageNotExist", q.delete_message, got.receipt_handle, status=404)
    q.delete_message(changed.receipt_handle)
    expect_error("ReceiptHandleError", q.delete_message, "not-a-handle")

    step("receive on an empty queue -> MessageNotExist (with and without a wait)")
    expect_error("MessageNotExist", q.receive_message, 0)
    expect_error("MessageNotExist", q.receive_message, 1)
    expect_error("MessageNotExist", q.peek_message)

    step("BatchSendMessage / BatchPeekMessage / BatchReceiveMessage / BatchDeleteMessage")
    batch = [Message("m%d" % i) for i in range(5)]
    sent = q.batch_send_message(batch)
    assert len(sent) == 5
    peeked = q.peek_message()
    assert peeked.message_body == "m0" and peeked.dequeue_count == 0, vars(peeked)
    peeked = q.batch_peek_message(16)
    assert [p.message_body for p in peeked] == ["m%d" % i for i in range(5)]
    got = q.batch_receive_message(3, 1)
    assert [g.message_body for g in got] == ["m0", "m1", "m2"]
    q.batch_delete_message([g.receipt_handle for g in got])
    got = q.batch_receive_message(16, 1)
    assert [g.message_body for g in got] == ["m3", "m4"]
    e = expect_error("ReceiptHandleError", q.batch_delete_message, [got[0].receipt_handle, "bogus"])
    assert e.sub_errors and e.sub_errors[0]["ReceiptHandle"] == "bogus", e.sub_errors
    q.delete_message(got[1].receipt_handle)  # the good one of the failed batch was deleted
    expect_error("MessageNotExist", q.peek_message)

    step("unknown queue -> QueueNotExist")
    missing = acc.get_queue("no-such-queue")
    expect_error("QueueNotExist", missing.get_attributes)
    expect_error("QueueNotExist", missing.send_message, Message("x"))
    expect_error("QueueNotExist", missing.receive_message, 0)
    expect_error("QueueNotExist", missing.delete)

    step("topics: CreateTopic / Get / Set / ListTopic / Subscribe / PublishMessage")
    t = acc.get_topic("sdk-t")
    assert t.create(TopicMeta()).endswith("/topics/sdk-t")
    tattrs = t.get_attributes()
    assert tattrs.topic_name == "sdk-t" and tattrs.maximum_message_size == 65536, vars(tattrs)
    t.set_attributes(TopicMeta())
    expect_error("InvalidArgument", t.set_attributes, TopicMeta(maximum_message_size=2048))
    urls, _ = acc.list_topic("sdk-")
    assert [u.rsplit("/", 1)[1] for u in urls] == ["sdk-t"], urls
    sub = t.get_subscription("sdk-t-to-q")
    sub_url = sub.subscribe(SubscriptionMeta("acs:mns:cn-hangzhou:123456:queues/sdk-q", filter_tag="hot"))
    assert sub_url.endswith("/topics/sdk-t/subscriptions/sdk-t-to-q"), sub_url
    sattrs = sub.get_attributes()
    assert sattrs.endpoint.endswith(":queues/sdk-q") and sattrs.filter_tag == "hot", vars(sattrs)
    sub.set_attributes(SubscriptionMeta(notify_strategy="BACKOFF_RETRY"))
    expect_error("InvalidArgument", sub.set_attributes,
                 SubscriptionMeta(notify_strategy="EXPONENTIAL_DECAY_RETRY"))  # queues are never retried
    hsub = t.get_subscription("sdk-t-to-http")
    hsub.subscribe(SubscriptionMeta("http://127.0.0.1:9/hook", notify_strategy="BACKOFF_RETRY"))
    hsub.set_attributes(SubscriptionMeta(notify_strategy="EXPONENTIAL_DECAY_RETRY"))
    hattrs = hsub.get_attributes()
    assert hattrs.notify_strategy == "EXPONENTIAL_DECAY_RETRY", vars(hattrs)
    expect_error("InvalidArgument", hsub.set_attributes, SubscriptionMeta(notify_strategy="SOMETIMES"))
    hsub.unsubscribe()
    expect_error("SubscriptionAlreadyExist", sub.subscribe, SubscriptionMeta("acs:mns:r:1:queues/sdk-q2"))
    expect_error("EndpointInvalid", t.get_subscription("bad").subscribe, SubscriptionMeta("ftp://x"))
    urls, _ = t.list_subscription()
    assert [u.rsplit("/", 1)[1] for u in urls] == ["sdk-t-to-q"], urls
    t.publish_message(TopicMessage("cold", "cold"))
    published = t.publish_message(TopicMessage('{"hot": true}', "hot"))
    assert published.message_body_md5 == md5_upper(b'{"hot": true}')
    got = q.receive_message(1)
    assert got.message_body == '{"hot": true}' and got.message_id == published.message_id
    q.delete_message(got.receipt_handle)
    expect_error("MessageNotExist", q.receive_message, 0)  # "cold" was filtered out

    step("Unsubscribe / DeleteTopic / DeleteQueue and their errors")
    sub.unsubscribe()
    expect_error("SubscriptionNotExist", sub.get_attributes)
    expect_error("SubscriptionNotExist", sub.unsubscribe)
    t.delete()
    expect_error("TopicNotExist", t.get_attributes)
    expect_error("TopicNotExist", t.publish_message, TopicMessage("x"))
    q.delete()
    acc.get_queue("sdk-q2").delete()
    expect_error("QueueNotExist", q.get_attributes)

    step("a Date 15+ minutes off -> TimeExpired; the same request signed now works")
    import http.client
    import time
    from mns.mns_client import MNSClient
    client = MNSClient(endpoint, key_id, secret)
    for offset, status in ((-3600, 408), (0, 200)):
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + offset))
        headers = {"x-mns-version": "2015-06-06", "date": date}
        headers["Authorization"] = client.get_signature(
            "GET", headers, "/queues", client.credentials_provider.get_credentials())
        conn = http.client.HTTPConnection(client.host)
        conn.request("GET", "/queues", "", headers)
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == status, (r.status, body)
        if status == 408:
            assert "<Code>TimeExpired</Code>" in body, body

    step("bad signature, unknown key: the same answer")
    wrong = Account(endpoint, key_id, secret + "x")
    e1 = expect_error("SignatureDoesNotMatch", wrong.list_queue, status=403)
    unknown = Account(endpoint, "SKnobody", secret)
    e2 = expect_error("SignatureDoesNotMatch", unknown.list_queue, status=403)
    assert (e1.type, e1.message) == (e2.type, e2.message), (e1, e2)
    print("ALL OK")


def sdk_request(acc, method, uri, body="", edit=None):
    """Sends one request through the SDK's own client (signing, transport, error decoding),
    for the requests its typed calls cannot make (no ReceiptHandle, malformed XML, a broken
    header). `edit(headers)` changes the signed headers before sending. Raises what the SDK
    raises for the answer."""
    client = acc.mns_client
    req_inter = RequestInternal(method, uri, data=body.encode() if body else "")

    class Req:
        request_id = None

    client.build_header(Req, req_inter)
    if edit:
        edit(req_inter.header)
    resp_inter = client.http.send_request(req_inter)

    class Resp:
        header = resp_inter.header

    client.check_status(req_inter, resp_inter, Resp)
    return resp_inter


def codes(endpoint, key_id, secret):
    """Each MNS error code sluice answers, as the SDK sees it: the exception's code and the
    answer's HTTP status (the table in docs/message-service.md)."""
    acc = Account(endpoint, key_id, secret)
    q = acc.get_queue("codes-q")
    q.set_encoding(False)
    meta = QueueMeta()
    meta.set_visibilitytimeout(30)
    q.create(meta)

    step("QueueAlreadyExist 409, InvalidQueueName 400, QueueNameLengthError 400")
    other = QueueMeta()
    other.set_visibilitytimeout(7)
    expect_error("QueueAlreadyExist", q.create, other, status=409)
    expect_error("InvalidQueueName", acc.get_queue("bad_name").create, QueueMeta(), status=400)
    expect_error("QueueNameLengthError", acc.get_queue("q" * 121).create, QueueMeta(), status=400)

    step("QueueNotExist 404 on every queue operation")
    missing = acc.get_queue("codes-missing")
    for name, call, args in (
        ("GetQueueAttributes", missing.get_attributes, ()),
        ("SetQueueAttributes", missing.set_attributes, (QueueMeta(),)),
        ("DeleteQueue", missing.delete, ()),
        ("SendMessage", missing.send_message, (Message("x"),)),
        ("BatchSendMessage", missing.batch_send_message, ([Message("x")],)),
        ("ReceiveMessage", missing.receive_message, (0,)),
        ("BatchReceiveMessage", missing.batch_receive_message, (4, 0)),
        ("PeekMessage", missing.peek_message, ()),
        ("BatchPeekMessage", missing.batch_peek_message, (4,)),
    ):
        print("  ", name)
        expect_error("QueueNotExist", call, *args, status=404)

    step("InvalidArgument 400: attribute out of range, body over the size cap, batch too big")
    bad = QueueMeta()
    bad.set_visibilitytimeout(43201)
    expect_error("InvalidArgument", q.set_attributes, bad, status=400)
    bad = QueueMeta()
    bad.set_visibilitytimeout(43201)
    expect_error("InvalidArgument", acc.get_queue("codes-new").create, bad, status=400)
    e = expect_error("InvalidArgument", q.send_message, Message("x" * 65537), status=400)
    print("  ", e.message)
    big = [Message("m"), Message("x" * 65537)]
    e = expect_error("InvalidArgument", q.batch_send_message, big, status=400)
    assert "Message[1]" in e.message or "65536" in e.message, e.message
    expect_error("InvalidArgument", q.batch_send_message,
                 [Message("m%d" % i) for i in range(17)], status=400)
    expect_error("InvalidArgument", q.batch_receive_message, 17, 0, status=400)
    expect_error("MessageNotExist", q.peek_message, status=404)  # nothing of those was kept

    step("MessageNotExist 404: receive and peek on an empty queue")
    e = expect_error("MessageNotExist", q.receive_message, 0, status=404)
    assert e.message == "Message not exist.", e.message
    expect_error("MessageNotExist", q.receive_message, 1, status=404)
    expect_error("MessageNotExist", q.batch_receive_message, 4, 0, status=404)
    expect_error("MessageNotExist", q.batch_peek_message, 4, status=404)

    step("MessageNotExist 404: a receipt handle that is no longer current")
    q.send_message(Message("m"))
    first = q.receive_message(0)
    changed = q.change_message_visibility(first.receipt_handle, 30)
    expect_error("MessageNotExist", q.delete_message, first.receipt_handle, status=404)
    expect_error("MessageNotExist", q.change_message_visibility, first.receipt_handle, 5,
                 status=404)
    e = expect_error("MessageNotExist", q.batch_delete_message, [first.receipt_handle],
                     status=404)
    assert [s["ErrorCode"] for s in e.sub_errors] == ["MessageNotExist"], e.sub_errors
    q.delete_message(changed.receipt_handle)
    expect_error("MessageNotExist", q.change_message_visibility, changed.receipt_handle, 5,
                 status=404)  # the message is gone

    step("ReceiptHandleError 400: a handle that is not one")
    expect_error("ReceiptHandleError", q.delete_message, "not-a-handle", status=400)
    expect_error("ReceiptHandleError", q.change_message_visibility, "not-a-handle", 5, status=400)
    e = expect_error("ReceiptHandleError", q.batch_delete_message, ["bogus"], status=404)
    assert e.sub_errors == [{"ErrorCode": "ReceiptHandleError",
                             "ErrorMessage": e.sub_errors[0]["ErrorMessage"],
                             "ReceiptHandle": "bogus"}], e.sub_errors

    step("MissingReceiptHandle 400, MissingVisibilityTimeout 400, MalformedXML 400")
    expect_error("MissingReceiptHandle", sdk_request, acc, "DELETE", "/queues/codes-q/messages",
                 status=400)
    expect_error("MissingReceiptHandle", sdk_request, acc, "PUT",
                 "/queues/codes-q/messages?VisibilityTimeout=5", status=400)
    expect_error("MissingVisibilityTimeout", sdk_request, acc, "PUT",
                 "/queues/codes-q/messages?ReceiptHandle=x", status=400)
    expect_error("MalformedXML", sdk_request, acc, "POST", "/queues/codes-q/messages",
                 "<Message><MessageBody>x</Message>", status=400)
    expect_error("InvalidArgument", sdk_request, acc, "POST", "/queues/codes-q/messages",
                 "<Message><DelaySeconds>1</DelaySeconds></Message>", status=400)

    step("topics: TopicNotExist 404, TopicNameInvalid 400, TopicNameLengthError 400")
    t = acc.get_topic("codes-t")
    t.create(TopicMeta())
    expect_error("TopicNameInvalid", acc.get_topic("bad.topic").create, TopicMeta(), status=400)
    expect_error("TopicNameLengthError", acc.get_topic("t" * 121).create, TopicMeta(), status=400)
    expect_error("InvalidArgument", t.set_attributes, TopicMeta(maximum_message_size=2048),
                 status=400)
    gone = acc.get_topic("codes-missing")
    for name, call, args in (
        ("GetTopicAttributes", gone.get_attributes, ()),
        ("SetTopicAttributes", gone.set_attributes, (TopicMeta(),)),
        ("DeleteTopic", gone.delete, ()),
        ("PublishMessage", gone.publish_message, (TopicMessage("x"),)),
        ("ListSubscriptionByTopic", gone.list_subscription, ()),
        ("Subscribe", gone.get_subscription("s").subscribe,
         (SubscriptionMeta("http://127.0.0.1:9/hook"),)),
    ):
        print("  ", name)
        expect_error("TopicNotExist", call, *args, status=404)

    step("subscriptions: SubscriptionNotExist 404, SubscriptionAlreadyExist 409, names, "
         "EndpointInvalid 400")
    sub = t.get_subscription("codes-s")
    sub.subscribe(SubscriptionMeta("acs:mns:cn-hangzhou:1:queues/codes-q"))
    expect_error("SubscriptionAlreadyExist", sub.subscribe,
                 SubscriptionMeta("acs:mns:cn-hangzhou:1:queues/codes-q", filter_tag="x"),
                 status=409)
    expect_error("SubscriptionNameInvalid", t.get_subscription("bad_sub").subscribe,
                 SubscriptionMeta("http://127.0.0.1:9/hook"), status=400)
    expect_error("SubscriptionNameLengthError", t.get_subscription("s" * 121).subscribe,
                 SubscriptionMeta("http://127.0.0.1:9/hook"), status=400)
    for target in ("ftp://x", "acs:mns:cn-hangzhou:1:topics/t"):
        expect_error("EndpointInvalid", t.get_subscription("codes-bad").subscribe,
                     SubscriptionMeta(target), status=400)
    expect_error("QueueNotExist", t.get_subscription("codes-noq").subscribe,
                 SubscriptionMeta("acs:mns:cn-hangzhou:1:queues/codes-missing"), status=404)
    expect_error("InvalidArgument", sub.set_attributes,
                 SubscriptionMeta(notify_strategy="SOMETIMES"), status=400)
    nosub = t.get_subscription("codes-none")
    expect_error("SubscriptionNotExist", nosub.get_attributes, status=404)
    expect_error("SubscriptionNotExist", nosub.set_attributes,
                 SubscriptionMeta(notify_strategy="BACKOFF_RETRY"), status=404)
    expect_error("SubscriptionNotExist", nosub.unsubscribe, status=404)

    step("authentication: MissingAuthorizationHeader 400, InvalidAuthorizationHeader 400, "
         "MissingDateHeader 400, InvalidDateHeader 400, TimeExpired 408, InvalidDegist 400, SignatureDoesNotMatch 403")

    def drop(name):
        return lambda h: h.pop(name)

    def put(name, value):
        return lambda h: h.__setitem__(name, value)

    expect_error("MissingAuthorizationHeader", sdk_request, acc, "GET", "/queues",
                 edit=drop("Authorization"), status=400)
    expect_error("InvalidAuthorizationHeader", sdk_request, acc, "GET", "/queues",
                 edit=put("Authorization", "Basic eDp5"), status=400)
    expect_error("MissingDateHeader", sdk_request, acc, "GET", "/queues",
                 edit=drop("date"), status=400)
    expect_error("InvalidDateHeader", sdk_request, acc, "GET", "/queues",
                 edit=put("date", "yesterday"), status=400)

    def resign(date=None, md5=None):
        def edit(h):
            if date:
                h["date"] = date
            if md5:
                h["content-md5"] = md5
            h["Authorization"] = acc.mns_client.get_signature(
                "POST" if md5 else "GET", h, "/queues/codes-q/messages" if md5 else "/queues",
                acc.mns_client.credentials_provider.get_credentials())
        return edit

    expect_error("TimeExpired", sdk_request, acc, "GET", "/queues",
                 edit=resign(date="Mon, 01 Jan 2024 00:00:00 GMT"), status=408)
    other_md5 = base64.b64encode(hashlib.md5(b"other").hexdigest().encode()).decode()
    expect_error("InvalidDegist", sdk_request, acc, "POST", "/queues/codes-q/messages",
                 "<Message><MessageBody>x</MessageBody></Message>", edit=resign(md5=other_md5),
                 status=400)
    expect_error("SignatureDoesNotMatch", Account(endpoint, key_id, "wrong").list_queue,
                 status=403)
    expect_error("SignatureDoesNotMatch", Account(endpoint, "SKnobody", secret).list_queue,
                 status=403)

    step("DeleteQueue / DeleteTopic, then QueueNotExist / TopicNotExist")
    sub.unsubscribe()
    t.delete()
    q.delete()
    expect_error("TopicNotExist", t.get_attributes, status=404)
    expect_error("QueueNotExist", q.receive_message, 0, status=404)
    print("ALL OK")


def deny(endpoint, key_id, secret):
    """A key with `queues/allowed-q:send,consume` only."""
    acc = Account(endpoint, key_id, secret)
    q = acc.get_queue("allowed-q")
    q.set_encoding(False)
    step("allowed: send, receive, delete")
    q.send_message(Message("ok"))
    got = q.receive_message(1)
    q.delete_message(got.receipt_handle)
    step("denied: attributes, other queues, lists, topics, create")
    expect_error("AccessDenied", q.get_attributes, status=403)
    expect_error("AccessDenied", acc.get_queue("other-q").send_message, Message("x"))
    expect_error("AccessDenied", acc.list_queue)
    expect_error("AccessDenied", acc.get_topic("alerts").publish_message, TopicMessage("x"))
    expect_error("AccessDenied", acc.get_queue("new-q").create, QueueMeta())
    print("ALL OK")


def flow(endpoint, key_id, secret, n):
    """Reads the rule's output from two queue subscriptions of one topic: `raw-q` (bodies as
    published; the consumer calls set_encoding(False)) and `b64-q` (subscription option
    base64_body; the consumer keeps the SDK's default base64 decoding)."""
    n = int(n)
    acc = Account(endpoint, key_id, secret)
    for name, encoding in (("raw-q", False), ("b64-q", True)):
        step("consume %d messages from %s (set_encoding(%s))" % (n, name, encoding))
        q = acc.get_queue(name)
        q.set_encoding(encoding)
        seen = []
        while len(seen) < n:
            try:
                msg = q.receive_message(3)
            except MNSServerException as e:
                if e.type == "MessageNotExist":
                    raise AssertionError("%s: only %d of %d messages arrived" % (name, len(seen), n))
                raise
            body = msg.message_body
            if isinstance(body, bytes):
                body = body.decode("utf-8")
            doc = json.loads(body)
            props = {k: v.get_string_value_by_type() for k, v in msg.user_properties.items()}
            assert props["device_name"] == doc["device"], (props, doc)
            assert props["source_topic"] == "/flowpk/%s/user/telemetry" % doc["device"], props
            assert props["rule"] == "to-flow" and props["source_message_id"], props
            seen.append(doc["seq"])
            q.delete_message(msg.receipt_handle)
        assert sorted(seen) == list(range(n)), seen
        expect_error("MessageNotExist", q.receive_message, 0)
    print("ALL OK")


def controls(endpoint, key_id, secret, queue):
    """QUEUE holds, sent through /v1/, `plain`, a body `x\\u0001y` and a message whose attribute
    `a` is `\\u0002`: peeked and received in one batch each, every message arrives, the odd body
    as base64 (its MD5 is the stored bytes') and the odd attribute as a BINARY property."""
    acc = Account(endpoint, key_id, secret)
    q = acc.get_queue(queue)
    q.set_encoding(False)

    def check(msgs):
        by_body = {}
        for m in msgs:
            by_body[m.message_body] = m
        assert len(msgs) == 3, [m.message_body for m in msgs]
        odd = by_body[base64.b64encode(b"x\x01y").decode()]
        assert odd.message_body_md5 == md5_upper(b"x\x01y"), odd.message_body_md5
        attr = by_body["attr"].user_properties["a"]
        assert attr.get_binary_value() == b"\x02", attr.get_binary_value()
        assert "plain" in by_body

    step("BatchPeekMessage of bodies and attributes XML cannot carry")
    check(q.batch_peek_message(16))
    step("BatchReceiveMessage of the same")
    msgs = q.batch_receive_message(16)
    check(msgs)
    q.batch_delete_message([m.receipt_handle for m in msgs])
    print("ALL OK")


def egress(endpoint, key_id, secret, *cases):
    """Each URL=ADDRESS: subscribing URL is refused with EndpointInvalid naming ADDRESS."""
    acc = Account(endpoint, key_id, secret)
    t = acc.get_topic("egress")
    t.create(TopicMeta())
    for i, case in enumerate(cases):
        url, addr = case.rsplit("=", 1)
        step("Subscribe %s" % url)
        e = expect_error("EndpointInvalid", t.get_subscription("s%d" % i).subscribe,
                         SubscriptionMeta(url), status=400)
        assert "Endpoint" in e.message and addr in e.message, e.message
        print("  ", e.message)
    assert acc.get_topic("egress").list_subscription()[0] == [], "nothing was created"
    print("ALL OK")


if __name__ == "__main__":
    scenario, args = sys.argv[1], sys.argv[2:]
    {"ops": ops, "codes": codes, "deny": deny, "flow": flow, "controls": controls, "egress": egress}[scenario](*args)
