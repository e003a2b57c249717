{{/*
Suspend and resume (agentSandbox.snapshots): where archives live, and what the idle
timeout does. The PVC is mounted into the controller at this path.
*/}}
{{- define "agent-sandbox.snapshotsPath" -}}/var/lib/agent-sandbox-snapshots{{- end }}

{{- define "agent-sandbox.snapshotsClaimName" -}}
{{- $pvc := .Values.agentSandbox.snapshots.pvc }}
{{- default (printf "%s-snapshots" (include "agent-sandbox.fullname" .)) $pvc.existingClaim }}
{{- end }}

{{/* SANDBOX_SNAPSHOT_STORE: file:///... for the PVC, s3://bucket/prefix, or empty (off). */}}
{{- define "agent-sandbox.snapshotStore" -}}
{{- $s := .Values.agentSandbox.snapshots }}
{{- if $s.pvc.enabled }}file://{{ include "agent-sandbox.snapshotsPath" . }}
{{- else if $s.s3.bucket }}s3://{{ $s.s3.bucket }}{{ with trimAll "/" $s.s3.prefix }}/{{ . }}{{ end }}
{{- end }}
{{- end }}

{{/* SANDBOX_IDLE_ACTION: the value, else suspend once a store is set, else end. */}}
{{- define "agent-sandbox.idleAction" -}}
{{- $s := .Values.agentSandbox.snapshots }}
{{- if $s.idleAction }}{{ $s.idleAction }}
{{- else if include "agent-sandbox.snapshotStore" . }}suspend
{{- else }}end
{{- end }}
{{- end }}

{{/* Checks on the snapshot values that compare two values (called from validate). */}}
{{- define "agent-sandbox.validateSnapshots" -}}
{{- $s := .Values.agentSandbox.snapshots }}
{{- if and $s.pvc.enabled $s.s3.bucket }}
{{- fail "agentSandbox.snapshots: set pvc.enabled or s3.bucket, not both: archives live in one store" }}
{{- end }}
{{- if and (eq $s.idleAction "suspend") (not (include "agent-sandbox.snapshotStore" .)) }}
{{- fail "agentSandbox.snapshots.idleAction=suspend needs a store: agentSandbox.snapshots.pvc.enabled or agentSandbox.snapshots.s3.bucket" }}
{{- end }}
{{- if and $s.pvc.enabled (not $s.pvc.existingClaim) (gt (int (include "agent-sandbox.controllerReplicas" .)) 1) (not (has "ReadWriteMany" $s.pvc.accessModes)) }}
{{- fail (printf "agentSandbox.snapshots.pvc.accessModes must include ReadWriteMany with %s controller replicas: every replica mounts the store (or use agentSandbox.snapshots.s3)" (include "agent-sandbox.controllerReplicas" .)) }}
{{- end }}
{{- end }}
