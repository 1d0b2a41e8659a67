{{/*
Expand the name of the chart.
*/}}
{{- define "gatehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "gatehouse.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "gatehouse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "gatehouse.labels" -}}
helm.sh/chart: {{ include "gatehouse.chart" . }}
{{ include "gatehouse.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gatehouse
{{- end }}

{{/*
Selector labels
*/}}
{{- define "gatehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gatehouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "gatehouse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gatehouse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Gatehouse image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "gatehouse.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
Names of the components' resources: the full name, cut to 40 characters, and a suffix,
so every name stays unique and within 63 characters, and StatefulSet names within 52
(their pods' controller-revision-hash label must fit in 63).
*/}}
{{- define "gatehouse.componentBase" -}}
{{- include "gatehouse.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "gatehouse.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "gatehouse.componentBase" .) }}
{{- end }}

{{- define "gatehouse.coordinator.headlessName" -}}
{{- printf "%s-coordinator-headless" (include "gatehouse.componentBase" .) }}
{{- end }}

{{- define "gatehouse.worker.fullname" -}}
{{- printf "%s-worker" (include "gatehouse.componentBase" .) }}
{{- end }}

{{- define "gatehouse.worker.metricsName" -}}
{{- printf "%s-worker-metrics" (include "gatehouse.componentBase" .) }}
{{- end }}

{{- define "gatehouse.etcd.fullname" -}}
{{- printf "%s-etcd" (include "gatehouse.componentBase" .) }}
{{- end }}

{{- define "gatehouse.etcd.headlessName" -}}
{{- printf "%s-etcd-headless" (include "gatehouse.componentBase" .) }}
{{- end }}

{{/*
The etcd endpoints of the coordinators, comma-separated: the bundled etcd's client
Service when etcd.deploy is true, etcd.endpoints otherwise.
*/}}
{{- define "gatehouse.etcd.endpoints" -}}
{{- if .Values.etcd.deploy }}
{{- printf "http://%s:2379" (include "gatehouse.etcd.fullname" .) }}
{{- else if .Values.etcd.endpoints }}
{{- join "," .Values.etcd.endpoints }}
{{- else }}
{{- fail "gatehouse: coordinators need etcd: set etcd.endpoints to the URLs of an existing etcd cluster, or etcd.deploy=true to deploy one with the release" }}
{{- end }}
{{- end }}

{{/*
The stable per-pod URLs of every coordinator replica, comma-separated, for the workers'
and clients' --coordinator.
*/}}
{{- define "gatehouse.coordinator.urls" -}}
{{- $sts := include "gatehouse.coordinator.fullname" . }}
{{- $svc := include "gatehouse.coordinator.headlessName" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.coordinator.replicas) }}
{{- $urls = append $urls (printf "%s://%s-%d.%s.%s.svc:%d" (include "gatehouse.scheme" $) $sts $i $svc $.Release.Namespace (int $.Values.coordinator.ports.grpc)) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{/*
Global flags shared by coordinators and workers: the diagnostics format and level.
*/}}
{{- define "gatehouse.logArgs" -}}
- --log-format
- {{ .Values.log.format | quote }}
- --log-level
- {{ .Values.log.level | quote }}
{{- end }}

{{/*
Environment shared by coordinators and workers: the pod's name and the OpenTelemetry
variables. POD_NAME comes first so later values can refer to it as $(POD_NAME).
*/}}
{{- define "gatehouse.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
{{- end }}
{{- $attrs := list (printf "k8s.namespace.name=%s" .Release.Namespace) "k8s.pod.name=$(POD_NAME)" }}
{{- with .Values.otel.resourceAttributes }}
{{- $attrs = append $attrs . }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- end }}

{{/*
Prometheus scrape annotations of a pod; call with (dict "port" N).
*/}}
{{- define "gatehouse.metricsAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | toString | quote }}
prometheus.io/path: "/metrics"
{{- end }}

{{/*
A preferred pod anti-affinity spreading the pods of one component over nodes; call
with (dict "ctx" $ "component" NAME).
*/}}
{{- define "gatehouse.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "gatehouse.selectorLabels" .ctx | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The memory a worker advertises (--memory): worker.memory, or else the container's
memory limit; empty when neither is set.
*/}}
{{- define "gatehouse.worker.memory" -}}
{{- $memory := .Values.worker.memory | toString }}
{{- if not $memory }}
{{- $limits := (.Values.worker.resources | default dict).limits | default dict }}
{{- $memory = $limits.memory | default "" | toString }}
{{- end }}
{{- if and $memory (not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$" $memory)) }}
{{- fail (printf "gatehouse: worker memory %q (from worker.memory or worker.resources.limits.memory) must be a size like 4Gi, 4096Mi or 4G; set worker.memory explicitly" $memory) }}
{{- end }}
{{- $memory }}
{{- end }}

{{/*
The scheme of every gRPC URL: https with tls.enabled.
*/}}
{{- define "gatehouse.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/*
The name servers' certificates are checked against: tls.serverName, or the coordinator
client Service's DNS name.
*/}}
{{- define "gatehouse.tls.serverName" -}}
{{- default (printf "%s.%s.svc" (include "gatehouse.coordinator.fullname" .) .Release.Namespace) .Values.tls.serverName }}
{{- end }}

{{/*
The --tls-* settings of every gatehouse container, as GATEHOUSE_TLS_* variables naming
the files of the tls.secretName Secret; nothing when TLS is off.
*/}}
{{- define "gatehouse.tlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: GATEHOUSE_TLS_CERT
  value: /etc/gatehouse/tls/tls.crt
- name: GATEHOUSE_TLS_KEY
  value: /etc/gatehouse/tls/tls.key
- name: GATEHOUSE_TLS_CA
  value: /etc/gatehouse/tls/ca.crt
- name: GATEHOUSE_TLS_SERVER_NAME
  value: {{ include "gatehouse.tls.serverName" . | quote }}
{{- if .Values.tls.clientAuth }}
- name: GATEHOUSE_TLS_CLIENT_AUTH
  value: "true"
{{- end }}
{{- end }}
{{- end }}

{{/*
The mount of the TLS Secret; nothing when TLS is off.
*/}}
{{- define "gatehouse.tlsVolumeMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/gatehouse/tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
The TLS Secret as a volume, readable by the pods' group (podSecurityContext.fsGroup);
nothing when TLS is off.
*/}}
{{- define "gatehouse.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "gatehouse: tls.enabled needs tls.secretName, a Secret of type kubernetes.io/tls with tls.crt, tls.key and ca.crt (as cert-manager writes it)" .Values.tls.secretName | quote }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/*
Git credentials for plans with a `source`, from the git.credentialsSecret Secret mounted
at /etc/gatehouse/git: an ssh key (`ssh-privatekey`, with `known_hosts`) through
GIT_SSH_COMMAND, and tokens (`.git-credentials`, one https://USER:TOKEN@HOST per line)
through git's store credential helper, set in git's environment configuration. Nothing
without the Secret.
*/}}
{{- define "gatehouse.gitEnv" -}}
{{- if .Values.git.credentialsSecret }}
- name: GIT_SSH_COMMAND
  value: "ssh -i /etc/gatehouse/git/ssh-privatekey -o IdentitiesOnly=yes -o UserKnownHostsFile=/etc/gatehouse/git/known_hosts"
- name: GIT_CONFIG_COUNT
  value: "1"
- name: GIT_CONFIG_KEY_0
  value: credential.helper
- name: GIT_CONFIG_VALUE_0
  value: "store --file=/etc/gatehouse/git/.git-credentials"
{{- end }}
{{- end }}

{{/*
The mount of the git credentials Secret; nothing without it.
*/}}
{{- define "gatehouse.gitVolumeMount" -}}
{{- if .Values.git.credentialsSecret }}
- name: git-credentials
  mountPath: /etc/gatehouse/git
  readOnly: true
{{- end }}
{{- end }}

{{/*
The git credentials Secret as a volume, readable by the pods' group only; nothing
without it.
*/}}
{{- define "gatehouse.gitVolume" -}}
{{- if .Values.git.credentialsSecret }}
- name: git-credentials
  secret:
    secretName: {{ .Values.git.credentialsSecret | quote }}
    defaultMode: 0440
{{- end }}
{{- end }}
