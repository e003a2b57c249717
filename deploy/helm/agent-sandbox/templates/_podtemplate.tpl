{{/*
The sandbox Pod the controller creates for each pool slot. The controller adds
generateName, its own labels (managed-by, state, session, template-hash) and an
ownerReference to the ConfigMap holding this text. It watches only pods carrying
this template's app.kubernetes.io/instance (the release), so two releases in one
namespace leave each other's pods alone.

No do-not-evict annotation here: a warm pod may go with its node (the controller makes
another). The controller adds them when it leases a pod to a session.

Disk: each writable path is an emptyDir of at most tmpDirSizeLimit, the root filesystem
is read-only when the image allows it, and the ephemeral-storage limit (tmpDirSizeLimit
+ rootfsSizeLimit) bounds everything the pod writes, logs included. Past it the
kubelet evicts the pod, and its session ends `evicted`.
*/}}
{{- define "agent-sandbox.podTemplate" -}}
{{- $job := .Values.agentSandbox.job }}
{{- $devsandbox := not $job.image.repository }}
{{- $command := $job.command }}
{{- if and $devsandbox (not $command) }}
{{- $command = list "python" "-m" "sandbox_controller.devsandbox" "--host" "0.0.0.0" "--port" "8080" }}
{{- end }}
{{- /* Empty: read-only with the devsandbox image (it writes only to /tmp), as is with yours. */}}
{{- $readOnly := $job.readOnlyRootFilesystem }}
{{- if kindIs "invalid" $readOnly }}
{{- $readOnly = $devsandbox }}
{{- end }}
{{- $securityContext := mergeOverwrite (deepCopy $job.securityContext) (dict "readOnlyRootFilesystem" $readOnly) }}
{{- $tmpBytes := include "agent-sandbox.bytes" $job.tmpDirSizeLimit | int64 }}
{{- $rootfsBytes := include "agent-sandbox.bytes" $job.rootfsSizeLimit | int64 }}
{{- $storage := dict "limits" (dict "ephemeral-storage" (include "agent-sandbox.quantity" (add $tmpBytes $rootfsBytes))) "requests" (dict "ephemeral-storage" (include "agent-sandbox.quantity" $rootfsBytes)) }}
{{- /* What the operator set in resources wins over the limits derived here. */}}
{{- $resources := mergeOverwrite $storage (deepCopy $job.resources) }}
apiVersion: v1
kind: Pod
metadata:
  labels:
    {{- include "agent-sandbox.selectorLabels" (dict "ctx" $ "component" "sandbox") | nindent 4 }}
    app.kubernetes.io/part-of: agent-sandbox
    {{- with $job.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with omit $job.annotations "cluster-autoscaler.kubernetes.io/safe-to-evict" "karpenter.sh/do-not-disrupt" }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  # A sandbox serves one session in its life: a crashed one is replaced, not restarted.
  restartPolicy: Never
  # Agent code must not reach the Kubernetes API with any identity.
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $job.terminationGracePeriodSeconds }}
  {{- with (.Values.agentSandbox.job.priorityClassName | default .Values.agentSandbox.priorityClassName) }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $job.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $job.podSecurityContext | nindent 4 }}
  {{- with $job.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $job.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $job.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumes:
    {{- range $job.writablePaths }}
    - name: {{ include "agent-sandbox.writableVolume" . }}
      emptyDir:
        sizeLimit: {{ $job.tmpDirSizeLimit }}
    {{- end }}
    {{- with $job.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  containers:
    - name: sandbox
      {{- if $devsandbox }}
      image: {{ include "agent-sandbox.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      {{- else }}
      image: {{ printf "%s:%s" $job.image.repository (default "latest" $job.image.tag) }}
      imagePullPolicy: {{ $job.image.pullPolicy }}
      {{- end }}
      {{- with $command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $job.args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: 8080
          protocol: TCP
      {{- with $job.env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $securityContext | nindent 8 }}
      volumeMounts:
        {{- range $job.writablePaths }}
        - name: {{ include "agent-sandbox.writableVolume" . }}
          mountPath: {{ . }}
        {{- end }}
        {{- with $job.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $job.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* The emptyDir behind one writable path: /tmp -> writable-tmp. */}}
{{- define "agent-sandbox.writableVolume" -}}
{{- printf "writable-%s" (trimPrefix "/" . | replace "/" "-" | replace "_" "-" | replace "." "-" | lower) | trunc 63 | trimSuffix "-" }}
{{- end }}
