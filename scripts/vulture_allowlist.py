"""Names vulture cannot see used: each is read or called by a library, a protocol or the
tests, never by our own code by name. Checked by `vulture` (see [tool.vulture] in
pyproject.toml). Add an entry only with its reason; dead code is removed, not listed."""

from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# httptools calls its parser callbacks by name (proxy/upstream.py).
_.on_header
_.on_headers_complete
_.on_body
_.on_message_begin
_.on_message_complete

# pydantic reads a model's settings from this class attribute (api/schemas.py,
# api/request_bodies.py, config.py).
_.model_config

# kubernetes-asyncio's Configuration reads it when dialling through a proxy
# (backends/kubernetes.py).
_.proxy_headers

# uvicorn.Server reads should_exit in its main loop and calls capture_signals around
# serve(); our Server overrides the latter (serving.py, kubesim/cluster.py).
_.should_exit
_.capture_signals
# uvicorn.Server.startup/shutdown use the lifespan that serve() would have set
# (serving.Listener and kubesim/cluster.py run startup/main_loop/shutdown themselves).
_.lifespan
# uvicorn's response cycle reads it in receive() and send(): a cut request's app sees
# the client gone and writes nothing more (edge.GuardedHttp).
_.disconnected

# prometheus_client calls collect() on every registered collector (metrics.py).
_.collect

# The async context manager protocol passes all three arguments (kubesim/sim.py).
_.exc_type
_.tb

# Test and benchmark support in the package: tests move the ManualClock by hand (and
# step its wall clock alone), drive kubesim's faults and read its call log, and wait
# for a scheduler round to settle.
_.ManualClock
_.advance
_.step_wall
# kubesim's call log names each caller (the HA drills' witness, tests/e2e/ha), and the
# drills write one kubeconfig per replica.
_.user_agent
_.kubeconfig_for
_.until_sleeping
_.set_faults
_.count_calls
_.pod_body
_.settle

# How many times the Kubernetes backend relisted (after 410 Gone): tests wait on it to
# see a resync happen (tests/backends/test_kubernetes.py).
_.relists

# The public client for editor backends: callers outside the package use it
# (sandbox_controller/client.py; tests/test_client.py).
_.SandboxClient
# Fields of the models that document the API's answers in its OpenAPI document
# (api/schemas.py): the handlers build that JSON by hand.
_.assigned
_.last_activity
_.deleted_pods  # api/operator.py RecoveryConfirmedBody
# asyncio calls a protocol's flow-control callbacks (proxy/websocket.py's relay sides).
_.pause_writing
_.resume_writing
# uvicorn reads it after the app returns (proxy/websocket.py ClientWebSocket: a refusal
# answered with an HTTP status ends the handshake).
_.handshake_complete
# FastAPI calls a route handler through its decorator; this one's name is used nowhere
# else, so vulture cannot see it (api/app.py, GET /internal/token-keys; POST
# /internal/sessions/{id}/resume).
_.token_keys
_.internal_resume

# The console's Jinja templates read these (sandbox_controller/console/templates).
_.activity_at
_.rows_html
_.oldest_idle_id
_.cap_y

# The audit trail's reader of the authenticated caller (api/auth.py): issue 25's audit
# events name the caller by it, wired when that part merges.
_.caller_id

# Webhook types reserved for session suspension (README "Webhooks"): receivers may
# code against them now; nothing sends them until suspension exists.
_.SESSION_SUSPENDED
_.SESSION_RESUMED

# proxy/__init__.py's module __getattr__ (PEP 562): Python calls it for `from proxy import
# ProxyProcess`, so the egress proxy's process never loads the editor proxy's stack.
_.__getattr__
# io.BufferedWriter/BufferedReader call these on the raw files devsandbox's snapshot
# hooks stream through (devsandbox_snapshot.py); botocore and aiohttp read, seek and
# measure an S3 part's body with them (snapshots/s3_store.py PartBody).
_.writable
_.readable
_.readinto
_.seekable
_.seek
_.tell
# tarfile reads it when it copies a member out (devsandbox_snapshot.py _unpack).
_.copybufsize
