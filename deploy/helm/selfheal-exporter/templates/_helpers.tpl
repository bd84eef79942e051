{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "selfheal-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name, prefixed with the chart name
unless the release name already contains it.
*/}}
{{- define "selfheal-exporter.fullname" -}}
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

{{- define "selfheal-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "selfheal-exporter.labels" -}}
helm.sh/chart: {{ include "selfheal-exporter.chart" . }}
{{ include "selfheal-exporter.selectorLabels" . }}
app.kubernetes.io/component: exporter
app.kubernetes.io/part-of: selfheal-exporter
app.kubernetes.io/version: {{ include "selfheal-exporter.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the pod: fixed for the life of a release.
*/}}
{{- define "selfheal-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "selfheal-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The headless Service of the sharded StatefulSet (its spec.serviceName).
*/}}
{{- define "selfheal-exporter.shardsServiceName" -}}
{{- printf "%s-shards" (include "selfheal-exporter.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
The Lease's name (leaderElection.leaseName, else <fullname>-prober).
*/}}
{{- define "selfheal-exporter.leaseName" -}}
{{- default (printf "%s-prober" (include "selfheal-exporter.fullname" . | trunc 56 | trimSuffix "-")) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "selfheal-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "selfheal-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "selfheal-exporter.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
The image reference: repository:tag, or repository@digest when a digest is given.
*/}}
{{- define "selfheal-exporter.image" -}}
{{- $tag := include "selfheal-exporter.tag" . }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must not be \"latest\": pin a version (or image.digest)" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The namespaces to observe, as a JSON list: `namespaces`, or config.watch.namespaces.
*/}}
{{- define "selfheal-exporter.namespaces" -}}
{{- $watch := .Values.config.watch | default dict }}
{{- $fromConfig := get $watch "namespaces" | default list }}
{{- .Values.namespaces | default $fromConfig | toJson }}
{{- end }}

{{/*
Name of the config file inside /etc/selfheal: TOML when configToml is given, else YAML.
*/}}
{{- define "selfheal-exporter.configFile" -}}
{{- if .Values.configToml }}selfheal.toml{{ else }}selfheal.yaml{{ end }}
{{- end }}

{{/*
The config file's content: configToml verbatim, or `config` with listen, namespaces and
probe targets filled in, as YAML.
*/}}
{{- define "selfheal-exporter.configContent" -}}
{{- if .Values.configToml }}
{{- .Values.configToml }}
{{- else }}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if hasKey $config "listen" }}
{{- fail "config.listen: set listenAddress and containerPort instead (the probes and the Service use containerPort)" }}
{{- end }}
{{- $_ := set $config "listen" (printf "%s:%d" .Values.listenAddress (int .Values.containerPort)) }}
{{- $watch := get $config "watch" | default dict }}
{{- $_ := set $watch "namespaces" (include "selfheal-exporter.namespaces" . | fromJsonArray) }}
{{- $_ := set $config "watch" $watch }}
{{- if .Values.probeTargets }}
{{- $probes := get $config "probes" | default dict }}
{{- $_ := set $probes "targets" .Values.probeTargets }}
{{- $_ := set $config "probes" $probes }}
{{- end }}
{{- printf "# selfheal-exporter configuration, rendered by the Helm chart %s from its values.\n" (include "selfheal-exporter.chart" .) }}
{{- toYaml $config }}
{{- end }}
{{- end }}

{{/*
The rules RBAC grants on namespaced resources: read-only.
*/}}
{{- define "selfheal-exporter.namespacedRules" -}}
# pods: restarts, deaths, readiness. events: the kubelet's "Killing ... failed liveness
# probe" Events. services: probe discovery and the pods behind a probed Service.
- apiGroups: [""]
  resources: ["pods", "events", "services"]
  verbs: ["get", "list", "watch"]
# Which pods are behind a Service (reserved: this version uses the Service's selector).
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
Whether the daemon runs with a web configuration file (TLS or basic auth or headers).
*/}}
{{- define "selfheal-exporter.webConfigured" -}}
{{- if or .Values.web.tls.enabled .Values.web.basicAuth.users .Values.web.headers -}}
true
{{- end -}}
{{- end }}

{{/*
The exporter-toolkit web configuration file (Secret <fullname>-web).
*/}}
{{- define "selfheal-exporter.webConfig" -}}
{{- $web := .Values.web -}}
{{- if $web.tls.enabled }}
tls_server_config:
  cert_file: /etc/selfheal-tls/tls.crt
  key_file: /etc/selfheal-tls/tls.key
  client_auth_type: {{ $web.tls.clientAuthType | default "NoClientCert" }}
  {{- if has ($web.tls.clientAuthType | default "") (list "VerifyClientCertIfGiven" "RequireAndVerifyClientCert") }}
  client_ca_file: /etc/selfheal-tls/ca.crt
  {{- end }}
  min_version: {{ $web.tls.minVersion | default "TLS12" }}
{{- end }}
{{- with $web.headers }}
http_server_config:
  headers:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- with $web.basicAuth.users }}
basic_auth_users:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A probe (livenessProbe/readinessProbe values) with scheme HTTPS when TLS is on.
*/}}
{{- define "selfheal-exporter.probe" -}}
{{- $probe := deepCopy .probe -}}
{{- if and .tls (hasKey $probe "httpGet") -}}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end }}
