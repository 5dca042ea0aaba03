"""A device on the official Alibaba IoT Python SDK (aliyun-iot-linkkit) that answers synchronous
calls, driven by the device_loop e2e test.

Usage: python3 rrpc_sdk.py PLAN_JSON

PLAN_JSON: {"port", "product_key", "device_name", "secret", "timeout_s"}

The device answers both call forms:
- system calls: it subscribes to `/sys/{pk}/{dn}/rrpc/request/+` and publishes `pong:` + the
  request to `/sys/{pk}/{dn}/rrpc/response/{id}`;
- custom-topic calls: it registers `/{pk}/{dn}/user/get` with the SDK's `subscribe_rrpc_topic`
  and answers `ext:` + the request with `thing_answer_rrpc`. Calls on `/{pk}/{dn}/user/silent`
  are received and never answered (for the timeout case).

Prints one JSON object per line: "request" events, "ready" once both subscriptions are granted,
and "done". It stops when a line arrives on stdin or after timeout_s.
"""

import json
import sys
import threading
import time

from linkkit import linkkit

plan = json.loads(sys.argv[1])
pk, dn = plan["product_key"], plan["device_name"]
lock = threading.Lock()


def emit(**event):
    with lock:
        print(json.dumps(event), flush=True)


connected = threading.Event()
subscribed = threading.Event()

lk = linkkit.LinkKit(
    host_name="127.0.0.1", product_key=pk, device_name=dn, device_secret=plan["secret"]
)
lk.config_mqtt(port=plan["port"], secure="", endpoint="127.0.0.1")

request_prefix = "/sys/%s/%s/rrpc/request/" % (pk, dn)


def on_connect(session_flag, rc, userdata):
    connected.set()


def on_subscribe_topic(mid, granted_qos, userdata):
    subscribed.set()


def on_topic_message(topic, payload, qos, userdata):
    if topic.startswith(request_prefix):
        call_id = topic[len(request_prefix):]
        emit(event="request", form="sys", id=call_id, payload=payload.decode("utf-8"))
        response = "/sys/%s/%s/rrpc/response/%s" % (pk, dn, call_id)
        lk.publish_topic(response, "pong:" + payload.decode("utf-8"), qos=0)


def on_topic_rrpc_message(rrpc_id, topic, payload, qos, userdata):
    emit(event="request", form="ext", id=rrpc_id, topic=topic, payload=payload.decode("utf-8"))
    if topic.endswith("/user/silent"):
        return
    lk.thing_answer_rrpc(rrpc_id, "ext:" + payload.decode("utf-8"))


lk.on_connect = on_connect
lk.on_subscribe_topic = on_subscribe_topic
lk.on_topic_message = on_topic_message
lk.on_topic_rrpc_message = on_topic_rrpc_message

deadline = time.time() + plan.get("timeout_s", 30)
lk.connect_async()
if not connected.wait(max(0.0, deadline - time.time())):
    emit(event="done", connected=False)
    lk.destruct()
    sys.exit(0)
# The SDK does not always report the SUBACK of its rrpc subscriptions; SUBACKs come in order,
# so once the plain subscription sent after them is granted, they are too.
lk.subscribe_rrpc_topic(["/%s/%s/user/get" % (pk, dn), "/%s/%s/user/silent" % (pk, dn)])
lk.subscribe_topic(request_prefix + "+", 0)
subscribed.wait(max(0.0, deadline - time.time()))
emit(event="ready")

stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
stop.wait(max(0.0, deadline - time.time()))
emit(event="done", connected=True)
lk.disconnect()
time.sleep(0.3)
lk.destruct()
