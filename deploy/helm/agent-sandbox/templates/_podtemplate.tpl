{{/*
The sandbox Pod the controller creates for each pool slot. The controller adds
generateName, its own labels (managed-by, state, session, template-hash) and an
ownerReference to the ConfigMap holding this text. It watches only pods carrying
this template's app.kubernetes.io/instance (the release), so two releases in one
namespace leave each other's pods alone.
*/}}
{{- define "agent-sandbox.podTemplate" -}}
{{- $job := .Values.agentSandbox.job }}
{{- $devsandbox := not $job.image.repository }}
{{- $command := $job.command }}
{{- if and $devsandbox (not $command) }}
{{- $command = list "python" "-m" "sandbox_controller.devsandbox" "--host" "0.0.0.0" "--port" "8080" }}
{{- end }}
apiVersion: v1
kind: Pod
metadata:
  labels:
    {{- include "agent-sandbox.selectorLabels" (dict "ctx" $ "component" "sandbox") | nindent 4 }}
    app.kubernetes.io/part-of: agent-sandbox
    {{- with $job.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $job.annotations }}
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
        {{- toYaml $job.resources | nindent 8 }}
      securityContext:
        {{- toYaml $job.securityContext | nindent 8 }}
      {{- with $job.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
