{{/* Names are cut at 63 characters: the limit of a DNS label and of a label value. */}}
{{- define "agent-sandbox.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-sandbox.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agent-sandbox.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "controller"). */}}
{{- define "agent-sandbox.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-sandbox.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Standard labels; call with (dict "ctx" $ "component" "controller"). */}}
{{- define "agent-sandbox.labels" -}}
helm.sh/chart: {{ include "agent-sandbox.chart" .ctx }}
{{ include "agent-sandbox.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: agent-sandbox
{{- end }}

{{- define "agent-sandbox.controllerName" -}}
{{- printf "%s-controller" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-sandbox.proxyName" -}}
{{- printf "%s-proxy" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-sandbox.sandboxBudgetName" -}}
{{- printf "%s-sandboxes" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A Kubernetes quantity (512Mi, 20Gi, 1.5G, 1000) in bytes, as an int64.
*/}}
{{- define "agent-sandbox.bytes" -}}
{{- $q := toString . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $suffix := trimPrefix $number $q }}
{{- $scale := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- if not (hasKey $scale $suffix) }}
{{- fail (printf "%q is not a size (e.g. 512Mi, 20Gi)" $q) }}
{{- end }}
{{- mulf (float64 $number) (get $scale $suffix) | int64 }}
{{- end }}

{{/*
A size in bytes written back as a quantity: in Gi or Mi when it is a whole number of them.
*/}}
{{- define "agent-sandbox.quantity" -}}
{{- $bytes := int64 . }}
{{- if eq (mod $bytes 1073741824) 0 }}{{ div $bytes 1073741824 }}Gi
{{- else if eq (mod $bytes 1048576) 0 }}{{ div $bytes 1048576 }}Mi
{{- else }}{{ $bytes }}
{{- end }}
{{- end }}

{{- define "agent-sandbox.podTemplateName" -}}
{{- printf "%s-pod-template" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-sandbox.secretName" -}}
{{- include "agent-sandbox.fullname" . }}
{{- end }}

{{- define "agent-sandbox.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent-sandbox.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agent-sandbox.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "agent-sandbox.controllerUrl" -}}
{{- printf "http://%s:8080" (include "agent-sandbox.controllerName" .) }}
{{- end }}

{{/* SANDBOX_PROXY_PUBLIC_URL: the explicit value, else the ingress host, else the Service. */}}
{{- define "agent-sandbox.proxyPublicUrl" -}}
{{- $c := .Values.agentSandbox.controller }}
{{- $ing := .Values.agentSandbox.proxy.ingress }}
{{- if $c.proxyPublicUrl }}
{{- $c.proxyPublicUrl | trimSuffix "/" }}
{{- else if and $ing.enabled $ing.host }}
{{- printf "%s://%s" (ternary "https" "http" (ne $ing.tlsSecretName "")) $ing.host }}
{{- else }}
{{- printf "http://%s.%s.svc:8081" (include "agent-sandbox.proxyName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* True (non-empty) when no database is configured and the controller falls back to SQLite. */}}
{{- define "agent-sandbox.sqliteFallback" -}}
{{- $db := .Values.agentSandbox.database }}
{{- if not (or $db.url $db.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Controller replicas: the value if set, else 2 on PostgreSQL (a leader and a hot standby)
and 1 on SQLite (a local file has one writer; a second replica would lead its own copy).
*/}}
{{- define "agent-sandbox.controllerReplicas" -}}
{{- $r := .Values.agentSandbox.controller.replicas }}
{{- if kindIs "invalid" $r }}{{ if include "agent-sandbox.sqliteFallback" . }}1{{ else }}2{{ end }}{{ else }}{{ int $r }}{{ end }}
{{- end }}

{{/*
Checks that values.schema.json cannot express because they compare two values.
Helm prints the message after "execution error at (...)", so each one names the value.
*/}}
{{- define "agent-sandbox.validate" -}}
{{- $s := .Values.agentSandbox.controller.scaling }}
{{- if gt (int $s.prewarmPoolSize) (int $s.maxTotalJobs) }}
{{- fail (printf "agentSandbox.controller.scaling.prewarmPoolSize (%d) must not be greater than agentSandbox.controller.scaling.maxTotalJobs (%d): the warm pool counts against the cap" (int $s.prewarmPoolSize) (int $s.maxTotalJobs)) }}
{{- end }}
{{- if gt (int $s.prewarm.min) (int $s.prewarm.max) }}
{{- fail (printf "agentSandbox.controller.scaling.prewarm.min (%d) must not be greater than agentSandbox.controller.scaling.prewarm.max (%d)" (int $s.prewarm.min) (int $s.prewarm.max)) }}
{{- end }}
{{- if and (gt (int (include "agent-sandbox.controllerReplicas" .)) 1) (include "agent-sandbox.sqliteFallback" .) }}
{{- fail "agentSandbox.controller.replicas > 1 needs agentSandbox.database.url or agentSandbox.database.existingSecret: each replica would elect itself leader of its own SQLite file" }}
{{- end }}
{{- end }}

{{/*
A secret value that is generated once and kept: the value from values.yaml, else the one
already in the release's Secret (lookup; empty under `helm template`), else a new random one.
Call with (dict "ctx" $ "key" "api-token" "value" "..." "length" 48).
*/}}
{{- define "agent-sandbox.stableSecret" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace (include "agent-sandbox.secretName" .ctx) }}
{{- $data := dig "data" (dict) $existing }}
{{- if hasKey $data .key }}
{{- index $data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}
{{- end }}

{{/* An env entry read from a Secret; call with (dict "ctx" $ "name" "SANDBOX_API_TOKEN" "cfg" .Values.agentSandbox.apiToken "key" "api-token"). */}}
{{- /*
One source of the projected "secrets" volume: a Secret key as a file named after the
setting (SANDBOX_SECRETS_DIR), so secrets never sit in the environment, where any child
process, crash dump or `kubectl describe` could show them.
*/}}
{{- define "agent-sandbox.secretFile" -}}
- secret:
    name: {{ default (include "agent-sandbox.secretName" .ctx) .cfg.existingSecret }}
    items:
      - key: {{ ternary .cfg.existingSecretKey .key (ne .cfg.existingSecret "") }}
        path: {{ .name | lower }}
{{- end }}

{{/* The secret values given in values (not generated ones, not existing Secrets): their
checksum on the controller's pod template rolls it when one changes. */}}
{{- define "agent-sandbox.secretValues" -}}
{{- $a := .Values.agentSandbox }}
{{- list $a.apiToken $a.apiTokens $a.tokenSecret $a.tokenSecretPrevious $a.hookSecret $a.hookSecretPrevious $a.proxyToken | toJson }}
{{- end }}

{{- define "agent-sandbox.secretsDir" -}}/var/run/secrets/agent-sandbox{{- end }}

{{- define "agent-sandbox.chartSecretNeeded" -}}
{{- $a := .Values.agentSandbox }}
{{- $console := $a.console.readOnlyToken }}
{{- if or (not $a.apiToken.existingSecret) (not $a.tokenSecret.existingSecret) (not $a.proxyToken.existingSecret) (and $a.database.url (not $a.database.existingSecret)) (and $console.value (not $console.existingSecret)) }}true{{ end }}
{{- range $cfg := list $a.apiTokens $a.tokenSecretPrevious $a.hookSecret $a.hookSecretPrevious }}
{{- if and $cfg.value (not $cfg.existingSecret) }}true{{ end }}
{{- end }}
{{- end }}

{{/* The console has a read-only token (a value, or a Secret of the operator's). */}}
{{- define "agent-sandbox.consoleToken" -}}
{{- $t := .Values.agentSandbox.console.readOnlyToken }}
{{- if or $t.value $t.existingSecret }}true{{ end }}
{{- end }}

{{- define "agent-sandbox.plansName" -}}
{{- printf "%s-plans" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* agentSandbox.plans as the controller's SANDBOX_PLANS_FILE (plans.py): snake_case keys. */}}
{{- define "agent-sandbox.plansFile" -}}
{{- $keys := dict "name" "name" "maxSessionsPerUser" "max_sessions_per_user" "maxPodsPerOrg" "max_pods_per_org" "warmShare" "warm_share" "sessionsPerMinute" "sessions_per_minute" }}
{{- $plans := list }}
{{- range .Values.agentSandbox.plans }}
{{- $plan := dict }}
{{- range $key, $value := . }}
{{- $_ := set $plan (get $keys $key) $value }}
{{- end }}
{{- $plans = append $plans $plan }}
{{- end }}
{{- toYaml (dict "plans" $plans) }}
{{- end }}

{{/* Egress (README "Control what sandboxes reach"): non-empty when the mode is not off. */}}
{{- define "agent-sandbox.egressOn" -}}
{{- if ne .Values.agentSandbox.egress.mode "off" }}true{{ end }}
{{- end }}

{{- define "agent-sandbox.egressName" -}}
{{- printf "%s-egress" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret (tls.crt, tls.key) and the ConfigMap (ca.pem, for sandboxes) of the egress CA. */}}
{{- define "agent-sandbox.egressCaName" -}}
{{- printf "%s-egress-ca" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* SANDBOX_EGRESS_PROXY_URL: what sandboxes get as HTTP(S)_PROXY (with their credentials). */}}
{{- define "agent-sandbox.egressUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "agent-sandbox.egressName" .) .Release.Namespace (int .Values.agentSandbox.egress.port) }}
{{- end }}

{{/* The egress settings the controller and the egress proxy share (SANDBOX_EGRESS_*). */}}
{{- define "agent-sandbox.egressEnv" -}}
{{- $e := .Values.agentSandbox.egress }}
- name: SANDBOX_EGRESS
  value: {{ $e.mode | quote }}
{{- if include "agent-sandbox.egressOn" . }}
- name: SANDBOX_EGRESS_ALLOW
  value: {{ join "," $e.allow | quote }}
- name: SANDBOX_EGRESS_GRANTABLE
  value: {{ join "," $e.grantable | quote }}
- name: SANDBOX_EGRESS_DENY_CIDRS
  value: {{ join "," $e.denyCidrs | quote }}
- name: SANDBOX_EGRESS_PROXY_URL
  value: {{ include "agent-sandbox.egressUrl" . | quote }}
- name: SANDBOX_EGRESS_PROXY_PORT
  value: {{ $e.port | int | quote }}
{{- with $e.noProxy }}
- name: SANDBOX_EGRESS_NO_PROXY
  value: {{ join "," . | quote }}
{{- end }}
{{- with $e.resolver }}
- name: SANDBOX_EGRESS_RESOLVER
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The egress CA's certificate and key, decided once per render so the Secret and the
ConfigMap agree: the user's Secret (its certificate from values, else read with lookup),
else the release's own Secret (lookup; kept across upgrades), else a new genCA.
Returns a dict {"cert", "key"} as JSON; key is empty for a user's Secret.
*/}}
{{- define "agent-sandbox.egressCa" -}}
{{- $ca := .Values.agentSandbox.egress.ca }}
{{- if $ca.existingSecret }}
{{- $cert := $ca.certificate }}
{{- if not $cert }}
{{- $found := lookup "v1" "Secret" .Release.Namespace $ca.existingSecret }}
{{- $cert = dig "data" "tls.crt" "" $found | b64dec }}
{{- end }}
{{- if not $cert }}
{{- fail (printf "agentSandbox.egress.ca.existingSecret %q cannot be read here (helm template, --dry-run, or no such Secret): set agentSandbox.egress.ca.certificate to its tls.crt (PEM)" $ca.existingSecret) }}
{{- end }}
{{- dict "cert" $cert "key" "" | toJson }}
{{- else }}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "agent-sandbox.egressCaName" .) }}
{{- $data := dig "data" (dict) $found }}
{{- if and (hasKey $data "tls.crt") (hasKey $data "tls.key") }}
{{- dict "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) | toJson }}
{{- else }}
{{- $new := genCA "agent-sandbox egress CA" 3650 }}
{{- dict "cert" $new.Cert "key" $new.Key | toJson }}
{{- end }}
{{- end }}
{{- end }}
