{{/* Names and labels shared by every object of the chart. */}}
{{- define "rillet.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rillet.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "rillet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rillet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rillet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "rillet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Seconds Kubernetes waits after the preStop hook starts before it kills the container: the whole drain. */}}
{{- define "rillet.terminationGraceSeconds" -}}
{{- add .Values.drain.preStopSeconds .Values.drain.graceSeconds .Values.drain.stopMarginSeconds }}
{{- end }}

{{- define "rillet.gpu" -}}
{{- if hasKey (.Values.resources.limits | default dict) "nvidia.com/gpu" }}true{{ end }}
{{- end }}

{{/*
The probe's check: the kubelet's native gRPC probe on grpc.health.v1, which speaks plaintext only; under TLS,
`rillet health` inside the container, trusting the Secret's ca.crt and checking security.tls.serverName (with mutual
TLS it presents the pod's own certificate, which then needs the clientAuth usage too).
*/}}
{{- define "rillet.healthCheck" -}}
{{- if .tls.enabled -}}
exec:
  command:
    - rillet
    - health
    - --target
    - "127.0.0.1:{{ .port }}"
    - --service
    - {{ .service | quote }}
    - --tls-ca
    - /etc/rillet/tls/ca.crt
    - --tls-server-name
    - {{ .serverName | quote }}
    {{- if .tls.mutualTls }}
    - --tls-cert
    - /etc/rillet/tls/tls.crt
    - --tls-key
    - /etc/rillet/tls/tls.key
    {{- end }}
{{- else -}}
grpc:
  port: {{ .port }}
  service: {{ .service | quote }}
{{- end }}
{{- end }}
