{{/*
What the prepuller and the headroom placeholders take from the rendered sandbox pod
template, so they follow it (and each later change to it) without repeating its logic.
*/}}

{{/* The sandbox pod template as a mapping. */}}
{{- define "agent-sandbox.sandboxPod" -}}
{{- include "agent-sandbox.podTemplate" . | fromYaml | toJson }}
{{- end }}

{{/* Every image the sandbox pod runs (init containers first), once each, with the pull
policy of its first container: a JSON list of {"image", "pullPolicy"}. */}}
{{- define "agent-sandbox.sandboxImages" -}}
{{- $spec := (include "agent-sandbox.sandboxPod" . | fromJson).spec }}
{{- $seen := dict }}
{{- $images := list }}
{{- range concat ($spec.initContainers | default list) $spec.containers }}
{{- if not (hasKey $seen .image) }}
{{- $_ := set $seen .image true }}
{{- $images = append $images (dict "image" .image "pullPolicy" (.imagePullPolicy | default "IfNotPresent")) }}
{{- end }}
{{- end }}
{{- toJson $images }}
{{- end }}

{{- define "agent-sandbox.prepullerName" -}}
{{- printf "%s-prepuller" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-sandbox.headroomName" -}}
{{- printf "%s-headroom" (include "agent-sandbox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A container that runs nothing of the sandbox's: no privileges, a read-only root. */}}
{{- define "agent-sandbox.idleSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
