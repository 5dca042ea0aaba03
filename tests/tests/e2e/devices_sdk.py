"""A device on the official Alibaba IoT Python SDK (aliyun-iot-linkkit), driven by the
devices e2e test.

Usage: python3 devices_sdk.py PLAN_JSON

PLAN_JSON: {"port", "product_key", "device_name", "secret", "ca" (PEM text, TLS when set),
"subscribe": [topics], "publish": [[topic, payload]], "wait_message": topic or null,
"then_publish": [topic, payload] or null, "wait_prop_reply": bool, "timeout_s"}

Prints one JSON object per line on stdout: {"event": "connect", "rc": n} for every CONNACK
(rc 4 = bad user name or password), "subscribed", "published", "message" (topic, payload),
"disconnect", and "done". The test reads the lines and acts on them (e.g. sends the downlink
once "ready" is printed).
"""

import json
import sys
import threading
import time

from linkkit import linkkit

plan = json.loads(sys.argv[1])
lock = threading.Lock()


def emit(**event):
    with lock:
        print(json.dumps(event), flush=True)


# The SDK reports a refused CONNECT to nobody (it just retries); wrap its private paho callback
# so the test sees the CONNACK code.
_original = linkkit.LinkKit._LinkKit__on_internal_connect


def _on_internal_connect(self, client, user_data, session_flag, rc):
    emit(event="connect", rc=rc)
    return _original(self, client, user_data, session_flag, rc)


linkkit.LinkKit._LinkKit__on_internal_connect = _on_internal_connect

connected = threading.Event()
subscribed = threading.Event()
disconnected = threading.Event()
got_message = threading.Event()
got_reply = threading.Event()

lk = linkkit.LinkKit(
    host_name="127.0.0.1",
    product_key=plan["product_key"],
    device_name=plan["device_name"],
    device_secret=plan["secret"],
)
if plan.get("ca"):
    lk.config_mqtt(port=plan["port"], secure="TLS", endpoint="127.0.0.1", cadata=plan["ca"])
else:
    lk.config_mqtt(port=plan["port"], secure="", endpoint="127.0.0.1")


def on_connect(session_flag, rc, userdata):
    connected.set()


def on_disconnect(rc, userdata):
    emit(event="disconnect", rc=rc)
    disconnected.set()


def on_subscribe_topic(mid, granted_qos, userdata):
    emit(event="subscribed", granted_qos=list(granted_qos))
    subscribed.set()


def on_topic_message(topic, payload, qos, userdata):
    emit(event="message", topic=topic, payload=payload.decode("utf-8"))
    if topic == plan.get("wait_message"):
        got_message.set()


def on_publish_topic(mid, userdata):
    emit(event="published", mid=mid)


def on_thing_prop_post(request_id, code, data, message, userdata):
    emit(event="prop_post_reply", id=request_id, code=code, data=data, message=message)
    got_reply.set()


lk.on_connect = on_connect
lk.on_thing_prop_post = on_thing_prop_post
lk.on_disconnect = on_disconnect
lk.on_subscribe_topic = on_subscribe_topic
lk.on_topic_message = on_topic_message
lk.on_publish_topic = on_publish_topic

deadline = time.time() + plan.get("timeout_s", 20)
lk.connect_async()
if not connected.wait(max(0.0, deadline - time.time())):
    emit(event="done", connected=False)
    lk.destruct()
    sys.exit(0)

if plan.get("subscribe"):
    lk.subscribe_topic([(t, 1) for t in plan["subscribe"]])
    subscribed.wait(max(0.0, deadline - time.time()))
for topic, payload in plan.get("publish", []):
    lk.publish_topic(topic, payload, qos=1)
emit(event="ready")
if plan.get("wait_message"):
    got_message.wait(max(0.0, deadline - time.time()))
if plan.get("wait_prop_reply"):
    # The reply to the property post comes after its commit; wait for it before anything
    # that ends the connection.
    got_reply.wait(max(0.0, deadline - time.time()))
if plan.get("then_publish"):
    topic, payload = plan["then_publish"]
    lk.publish_topic(topic, payload, qos=1)
    disconnected.wait(max(0.0, deadline - time.time()))
emit(event="done", connected=True)
lk.disconnect()
time.sleep(0.3)
lk.destruct()
