{{/* Chart name. */}}
{{- define "keyscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name contains it. */}}
{{- define "keyscope.fullname" -}}
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

{{/* chart label: name-version. */}}
{{- define "keyscope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "keyscope.labels" -}}
helm.sh/chart: {{ include "keyscope.chart" . }}
{{ include "keyscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyscope
{{- end }}

{{/* Selector labels of keyscope's pods. */}}
{{- define "keyscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Name of the evaluation Redis's resources. */}}
{{- define "keyscope.redisName" -}}
{{- printf "%s-redis" (include "keyscope.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* Selector labels of the evaluation Redis. */}}
{{- define "keyscope.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "keyscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: evaluation-redis
{{- end }}

{{/* Labels of the evaluation Redis's resources. */}}
{{- define "keyscope.redisLabels" -}}
helm.sh/chart: {{ include "keyscope.chart" . }}
{{ include "keyscope.redisSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyscope
keyscope/evaluation-only: "true"
{{- end }}

{{/* Annotation of every evaluation-only resource. */}}
{{- define "keyscope.redisAnnotations" -}}
keyscope/warning: "FOR EVALUATION ONLY: a single Redis without persistence; every key is lost when it restarts"
{{- end }}

{{/* The ServiceAccount keyscope runs as. */}}
{{- define "keyscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyscope.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the pepper, the bootstrap token and the Redis password. */}}
{{- define "keyscope.secretName" -}}
{{- default (include "keyscope.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* The image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "keyscope.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Whether keyscope runs on Redis (every case but config.store.kind: memory). */}}
{{- define "keyscope.usesRedis" -}}
{{- $store := (.Values.config).store | default dict }}
{{- if ne (toString ($store.kind | default "redis")) "memory" }}true{{ end }}
{{- end }}

{{/* Whether a Redis password reaches keyscope (and the evaluation Redis): given, generated for
the evaluation Redis, or possibly in the existing Secret. */}}
{{- define "keyscope.hasRedisPassword" -}}
{{- if or .Values.redis.password .Values.redis.evaluation.enabled .Values.existingSecret }}true{{ end }}
{{- end }}

{{/* Where the chart mounts things. */}}
{{- define "keyscope.configPath" -}}/etc/keyscope/config.yaml{{- end }}
{{- define "keyscope.tlsDir" -}}/etc/keyscope/tls{{- end }}
{{- define "keyscope.redisTlsDir" -}}/etc/keyscope/redis-tls{{- end }}
{{- define "keyscope.otlpCaDir" -}}/etc/keyscope/otlp-ca{{- end }}

{{/* The Redis URL keyscope uses (no password ever). */}}
{{- define "keyscope.redisUrl" -}}
{{- if .Values.redis.evaluation.enabled }}
{{- printf "%s://%s.%s.svc:6379" (ternary "rediss" "redis" .Values.redis.tls.enabled) (include "keyscope.redisName" .) .Release.Namespace }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/*
keyscope's configuration: the chart-managed keys with values.config merged over them, checked
so that no secret ever lands in the ConfigMap and the settings fit together. Every template
that depends on the configuration includes this, so a bad combination fails the render.
*/}}
{{- define "keyscope.config" -}}
{{- $v := .Values }}
{{- $user := deepCopy ($v.config | default dict) }}
{{- /* Secrets never go in values.config (it becomes a ConfigMap). */}}
{{- $userSecurity := $user.security | default dict }}
{{- if hasKey $userSecurity "pepper" }}
{{- fail "config.security.pepper would land in a ConfigMap: set the `pepper` value (kept in a Secret) or use existingSecret" }}
{{- end }}
{{- $userBootstrap := $user.bootstrap | default dict }}
{{- if hasKey $userBootstrap "admin_token" }}
{{- fail "config.bootstrap.admin_token would land in a ConfigMap: set the `bootstrapAdminToken` value (kept in a Secret) or use existingSecret" }}
{{- end }}
{{- $userStore := $user.store | default dict }}
{{- $userRedis := $userStore.redis | default dict }}
{{- if hasKey $userRedis "password" }}
{{- fail "config.store.redis.password would land in a ConfigMap: set the `redis.password` value (kept in a Secret) or use existingSecret" }}
{{- end }}
{{- range $name, $url := dict "config.store.redis.url" (toString ($userRedis.url | default "")) "redis.url" (toString ($v.redis.url | default "")) }}
{{- if regexMatch "://[^/@,]*:[^/@,]*@" $url }}
{{- fail (printf "%s holds a password (`:...@`), which would land in a ConfigMap: leave it out of the URL and set the `redis.password` value (kept in a Secret) or use existingSecret" $name) }}
{{- end }}
{{- /* Never echo a URL: it may hold a credential. */}}
{{- range $i, $node := splitList "," $url }}
{{- if and $url (not (regexMatch "^rediss?://[^ ]+$" (trim $node))) }}
{{- fail (printf "%s: entry %d must start with redis:// or rediss://" $name $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* The bootstrap token's shape, checked without echoing it. */}}
{{- if and $v.bootstrapAdminToken (not (regexMatch "^[a-z0-9]{1,16}_[A-Za-z0-9]{20}_[A-Za-z0-9]{28}$" $v.bootstrapAdminToken)) }}
{{- fail "bootstrapAdminToken is not a keyscope token (<prefix>_<20-character key id>_<28 characters>): make one with `keyscope token new`" }}
{{- end }}
{{- /* The keys the chart manages. */}}
{{- $server := dict "grpc_addr" "0.0.0.0:50051" "http_addr" "0.0.0.0:9464" }}
{{- if $v.tls.enabled }}
{{- if not $v.tls.secretName }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key, and ca.crt for client certificates)" }}
{{- end }}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" (include "keyscope.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "keyscope.tlsDir" .)) "client_auth" $v.tls.clientAuth }}
{{- if ne $v.tls.clientAuth "none" }}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" (include "keyscope.tlsDir" .)) }}
{{- end }}
{{- $_ := set $server "tls" $tls }}
{{- end }}
{{- $managed := dict "server" $server "log" (dict "format" "json") }}
{{- $usesRedis := include "keyscope.usesRedis" . }}
{{- if $usesRedis }}
{{- $url := include "keyscope.redisUrl" . }}
{{- if and (not $url) (not $userRedis.url) }}
{{- fail "keyscope needs Redis: set redis.url (e.g. redis://redis-master.redis.svc:6379), or redis.evaluation.enabled=true to try keyscope with a throwaway Redis" }}
{{- end }}
{{- $redis := dict "cluster" $v.redis.cluster }}
{{- if $url }}
{{- $_ := set $redis "url" $url }}
{{- end }}
{{- if and $v.redis.username (not $v.redis.evaluation.enabled) }}
{{- $_ := set $redis "username" $v.redis.username }}
{{- end }}
{{- if $v.redis.tls.enabled }}
{{- if not $v.redis.tls.secretName }}
{{- fail "redis.tls.enabled needs redis.tls.secretName (a Secret with ca.crt, and tls.crt/tls.key when redis.tls.clientCert)" }}
{{- end }}
{{- $effectiveUrl := toString ($userRedis.url | default $url) }}
{{- range $node := splitList "," $effectiveUrl }}
{{- if not (hasPrefix "rediss://" (trim $node)) }}
{{- fail "redis.tls.enabled needs rediss:// URLs (redis.url)" }}
{{- end }}
{{- end }}
{{- $rtls := dict "ca_file" (printf "%s/ca.crt" (include "keyscope.redisTlsDir" .)) }}
{{- if $v.redis.tls.clientCert }}
{{- $_ := set $rtls "cert_file" (printf "%s/tls.crt" (include "keyscope.redisTlsDir" .)) }}
{{- $_ := set $rtls "key_file" (printf "%s/tls.key" (include "keyscope.redisTlsDir" .)) }}
{{- end }}
{{- $_ := set $redis "tls" $rtls }}
{{- end }}
{{- $_ := set $managed "store" (dict "kind" "redis" "redis" $redis) }}
{{- else }}
{{- if or $v.autoscaling.enabled (ne (int $v.replicaCount) 1) }}
{{- fail "config.store.kind memory keeps keys inside each replica: it needs replicaCount=1 and autoscaling.enabled=false (use Redis for more replicas)" }}
{{- end }}
{{- if $v.redis.evaluation.enabled }}
{{- fail "config.store.kind memory does not use Redis: turn redis.evaluation.enabled off" }}
{{- end }}
{{- end }}
{{- if $v.telemetry.otlpEndpoint }}
{{- $telemetry := dict "otlp_endpoint" $v.telemetry.otlpEndpoint }}
{{- if $v.telemetry.caSecretName }}
{{- if not (hasPrefix "https://" $v.telemetry.otlpEndpoint) }}
{{- fail "telemetry.caSecretName is for an https:// telemetry.otlpEndpoint" }}
{{- end }}
{{- $_ := set $telemetry "otlp_ca_file" (printf "%s/ca.crt" (include "keyscope.otlpCaDir" .)) }}
{{- end }}
{{- $_ := set $managed "telemetry" $telemetry }}
{{- else if $v.telemetry.caSecretName }}
{{- fail "telemetry.caSecretName needs telemetry.otlpEndpoint" }}
{{- end }}
{{- $config := mergeOverwrite $managed $user }}
{{- /* Graceful shutdown: the delay must end before the last fifth of the grace period. */}}
{{- $grace := int64 (($config.server).shutdown_grace_ms | default 25000) }}
{{- $delay := int64 (($config.server).shutdown_delay_ms | default 0) }}
{{- if ge (mul $delay 5) (mul $grace 4) }}
{{- fail (printf "config.server.shutdown_delay_ms (%d) must be less than 80%% of config.server.shutdown_grace_ms (%d): keyscope refuses to start otherwise" $delay $grace) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* terminationGracePeriodSeconds: keyscope's grace period, rounded up, plus the margin. */}}
{{- define "keyscope.terminationGracePeriodSeconds" -}}
{{- $config := include "keyscope.config" . | fromYaml }}
{{- $grace := int64 (($config.server).shutdown_grace_ms | default 25000) }}
{{- add (div (add $grace 999) 1000) .Values.terminationGraceMarginSeconds }}
{{- end }}

{{/* An env var from the keyscope Secret (or existingSecret). */}}
{{- define "keyscope.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
