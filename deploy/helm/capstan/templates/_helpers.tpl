{{- define "capstan.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "capstan.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "capstan.labels" -}}
{{ include "capstan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "capstan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "capstan.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Power-limit writes need CAP_SYS_ADMIN; telemetry and dry runs do not. */}}
{{- define "capstan.writesLimits" -}}
{{- if and .Values.capping.enabled (not .Values.capping.dryRun) }}true{{ end -}}
{{- end -}}

{{/* The agent reads its own Node for its power domain (etcd.domainLabels under a cluster budget). */}}
{{- define "capstan.readsNode" -}}
{{- if and .Values.capping.enabled (eq .Values.budget.source "etcd") .Values.etcd.domainLabels }}true{{ end -}}
{{- end -}}

{{/* The agent's command line; every flag is checked against the agent's real flags in CI. */}}
{{- define "capstan.args" -}}
- --path.sysfs=/host/sys
- --path.procfs=/host/proc
- {{ printf "--web.listen-address=:%v" .Values.web.port | quote }}
- {{ printf "--log.level=%s" .Values.log.level | quote }}
- {{ printf "--log.format=%s" .Values.log.format | quote }}
- {{ printf "--gpu.backend=%s" .Values.gpu.backend | quote }}
{{- range $name, $on := .Values.collectors }}
- {{ printf "--%scollector.%s" (ternary "" "no-" $on) $name | quote }}
{{- end }}
{{- with .Values.nic.include }}
- {{ printf "--nic.include=%s" . | quote }}
{{- end }}
{{- with .Values.nic.exclude }}
- {{ printf "--nic.exclude=%s" . | quote }}
{{- end }}
{{- with .Values.otlp }}
{{- if .endpoint }}
- {{ printf "--otlp.endpoint=%s" .endpoint | quote }}
- {{ printf "--otlp.protocol=%s" .protocol | quote }}
{{- if .insecure }}
- --otlp.insecure
{{- end }}
{{- with .interval }}
- {{ printf "--otlp.interval=%s" . | quote }}
{{- end }}
{{- with .compression }}
- {{ printf "--otlp.compression=%s" . | quote }}
{{- end }}
{{- with .temporality }}
- {{ printf "--otlp.temporality=%s" . | quote }}
{{- end }}
{{- if .headersSecret.name }}
- {{ printf "--otlp.headers-file=/etc/capstan/otlp-headers/%s" .headersSecret.key | quote }}
{{- end }}
{{- if .tlsSecret.name }}
- --otlp.tls.ca-file=/etc/capstan/otlp-tls/ca.crt
{{- if .tlsSecret.clientCertificate }}
- --otlp.tls.cert-file=/etc/capstan/otlp-tls/tls.crt
- --otlp.tls.key-file=/etc/capstan/otlp-tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.capping }}
{{- if .enabled }}
- --capping.enabled
{{- if .dryRun }}
- --capping.dry-run
{{- else }}
- --capping.state-file=/var/lib/capstan/state.json
{{- end }}
{{- with .period }}
- {{ printf "--capping.period=%s" . | quote }}
{{- end }}
{{- if not (kindIs "invalid" .guardBandPercent) }}
- {{ printf "--capping.guard-band-percent=%v" .guardBandPercent | quote }}
{{- end }}
{{- with .onExit }}
- {{ printf "--capping.on-exit=%s" . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.budget }}
- {{ printf "--budget.source=%s" .source | quote }}
{{- if .watts }}
- {{ printf "--budget.watts=%v" (int64 .watts) | quote }}
{{- end }}
{{- if .fallbackWatts }}
- {{ printf "--budget.fallback-watts=%v" (int64 .fallbackWatts) | quote }}
{{- end }}
{{- end }}
{{- if eq .Values.budget.source "etcd" }}
- {{ printf "--etcd.endpoints=%s" (join "," (required "etcd.endpoints is required with budget.source etcd" .Values.etcd.endpoints)) | quote }}
- {{ printf "--etcd.group=%s" (required "etcd.group is required with budget.source etcd" .Values.etcd.group) | quote }}
{{- with .Values.etcd.domainLabels }}
- {{ printf "--etcd.domain-labels=%s" (join "," .) | quote }}
{{- end }}
{{- with .Values.etcd.priority }}
- {{ printf "--etcd.priority=%v" (int64 .) | quote }}
{{- end }}
{{- with .Values.etcd.leaseTTL }}
- {{ printf "--etcd.lease-ttl=%s" . | quote }}
{{- end }}
{{- with .Values.etcd.prefix }}
- {{ printf "--etcd.prefix=%s" . | quote }}
{{- end }}
{{- if .Values.etcd.username }}
- {{ printf "--etcd.username=%s" .Values.etcd.username | quote }}
- {{ printf "--etcd.password-file=/etc/capstan/etcd-password/%s" .Values.etcd.passwordSecret.key | quote }}
{{- end }}
{{- if .Values.etcd.tlsSecret.name }}
- --etcd.tls.ca-file=/etc/capstan/etcd/ca.crt
- --etcd.tls.cert-file=/etc/capstan/etcd/tls.crt
- --etcd.tls.key-file=/etc/capstan/etcd/tls.key
{{- end }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}
