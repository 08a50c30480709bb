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
