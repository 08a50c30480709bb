{{- define "streamgate.name" -}}streamgate-operator{{- end -}}

{{- define "streamgate.labels" -}}
app.kubernetes.io/name: streamgate-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: streamgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "streamgate.selector" -}}
app.kubernetes.io/name: streamgate-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamgate.operatorImage" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "streamgate.sidecarImage" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The StreamGate platform's nine services (the seed's port table), as a JSON list:
     platform.yaml renders them, nats-permissions.yaml their NATS permissions. */}}
{{- define "streamgate.platformServices" -}}
{{- list
    (dict "name" "api-gateway" "port" 9090 "upstreams" (list "auth" "upload" "metadata" "streaming" "cache"))
    (dict "name" "upload" "port" 9091 "publish" (list "file.uploaded") "upstreams" (list "metadata") "callers" (list "api-gateway"))
    (dict "name" "transcoder" "port" 9092 "publish" (list "transcoding.started" "transcoding.completed" "transcoding.failed") "subscribe" (list "file.uploaded") "upstreams" (list "metadata" "upload"))
    (dict "name" "streaming" "port" 9093 "publish" (list "streaming.started" "streaming.stopped") "subscribe" (list "transcoding.completed") "upstreams" (list "metadata" "cache" "auth") "callers" (list "api-gateway"))
    (dict "name" "metadata" "port" 9005 "publish" (list "metadata.created" "metadata.updated" "metadata.deleted") "subscribe" (list "file.uploaded" "transcoding.completed") "upstreams" (list "cache"))
    (dict "name" "cache" "port" 9006 "subscribe" (list "metadata.updated" "metadata.deleted"))
    (dict "name" "auth" "port" 9007 "callers" (list "api-gateway" "streaming"))
    (dict "name" "worker" "port" 9008 "publish" (list "job.completed" "job.failed") "subscribe" (list "job.submitted") "upstreams" (list "metadata"))
    (dict "name" "monitor" "port" 9009 "publish" (list "alert.triggered" "alert.resolved") "subscribe" (list "transcoding.failed" "job.failed")) | toJson -}}
{{- end -}}
