{{/*
Names, labels and the facts about each service that the shared templates
(_deployment.tpl and the files that range over the services) read.
*/}}

{{- define "chattermail.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chattermail.fullname" -}}
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

{{/* A name of the release's: chattermail.resourceName (list $ "sender"). */}}
{{- define "chattermail.resourceName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "chattermail.fullname" $root | trunc 40 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chattermail.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "chattermail.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chattermail
{{- end }}

{{/* Selector labels of one service's pods: (list $ "sender"). */}}
{{- define "chattermail.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "chattermail.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels of one service's objects: (list $ "sender"). */}}
{{- define "chattermail.componentLabels" -}}
{{ include "chattermail.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "chattermail.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chattermail.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The services, in pipeline order. */}}
{{- define "chattermail.components" -}}
ingest rewrite quota sender
{{- end }}

{{/*
The JetStream stream and durable consumer each service consumes: what KEDA
watches. These are fixed by the code (platform/bus, each service's Stage).
*/}}
{{- define "chattermail.consumer" -}}
{{- $c := dict "ingest" (list "POSTS" "ingest") "rewrite" (list "COMPOSE" "rewrite") "quota" (list "REWRITTEN" "quota") "sender" (list "READY" "sender") }}
{{- toJson (index $c .) }}
{{- end }}

{{/* Image of a service: (list $ "sender"). */}}
{{- define "chattermail.image" -}}
{{- $root := index . 0 }}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) (index . 1) (default $root.Chart.AppVersion $root.Values.image.tag) }}
{{- end }}

{{/* True when the service's replica count is left to an HPA or KEDA. */}}
{{- define "chattermail.autoscaled" -}}
{{- $c := index (index . 0).Values (index . 1) }}
{{- if or $c.autoscaling.enabled $c.keda.enabled }}true{{ end }}
{{- end }}

{{/* Mount points of the secrets; the tenants file names the first two. */}}
{{- define "chattermail.paths" -}}
config: /etc/chattermail/config
configFile: /etc/chattermail/config/chattermail.yaml
dkim: /etc/chattermail/dkim
smtp: /etc/chattermail/smtp
replyTokenKeys: /etc/chattermail/reply-token-keys
unsubscribeKey: /etc/chattermail/unsubscribe-key
adminToken: /etc/chattermail/admin-token
smtpTLS: /etc/chattermail/smtp-tls
{{- end }}

{{/*
Name of the Secret holding one kind of secret material, or "" when there
is none: (list $ "replyTokenKeys").
*/}}
{{- define "chattermail.secretName" -}}
{{- $root := index . 0 }}
{{- $kind := index . 1 }}
{{- $s := index $root.Values.secrets $kind }}
{{- if $s.existingSecret }}
{{- $s.existingSecret }}
{{- else if or $s.value $s.keys $s.passwords }}
{{- include "chattermail.resourceName" (list $root (index (dict "replyTokenKeys" "reply-token-keys" "unsubscribeKey" "unsubscribe-key" "adminToken" "admin-token" "dkim" "dkim-keys" "smtp" "smtp-passwords" "apiKeys" "api-keys") $kind)) }}
{{- end }}
{{- end }}

{{/* Key of that Secret holding the file: (list $ "replyTokenKeys"). */}}
{{- define "chattermail.secretKey" -}}
{{- $root := index . 0 }}
{{- $s := index $root.Values.secrets (index . 1) }}
{{- if $s.existingSecret }}{{ $s.existingSecretKey }}{{ else }}{{ index (dict "replyTokenKeys" "keys" "unsubscribeKey" "key" "adminToken" "token") (index . 1) }}{{ end }}
{{- end }}

{{- define "chattermail.redisSecretName" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecret }}{{ else }}{{ include "chattermail.resourceName" (list . "redis") }}{{ end }}
{{- end }}

{{/*
The tenants file: config.tenants and config.pacing, with the digests of
secrets.apiKeys added to each tenant's api_keys.
*/}}
{{- define "chattermail.tenantsFile" -}}
{{- $tenants := deepCopy (.Values.config.tenants | default dict) }}
{{- range $tenant, $keys := .Values.secrets.apiKeys.keys }}
{{- if not (hasKey $tenants $tenant) }}
{{- fail (printf "secrets.apiKeys.keys.%s: no such tenant in config.tenants" $tenant) }}
{{- end }}
{{- $t := index $tenants $tenant }}
{{- $digests := $t.api_keys | default list }}
{{- range $keys }}
{{- $digests = append $digests (printf "sha256:%s" (sha256sum .)) }}
{{- end }}
{{- $_ := set $t "api_keys" $digests }}
{{- end }}
{{- $doc := dict "tenants" $tenants }}
{{- with .Values.config.pacing }}
{{- $_ := set $doc "pacing" . }}
{{- end }}
{{- toYaml $doc }}
{{- end }}

{{/* Checks that stop a broken or unsafe install with a clear message. */}}
{{- define "chattermail.validate" -}}
{{- if not .Values.config.tenants }}
{{- fail "config.tenants: at least one tenant is required (the tenants file, see the top-level README)" }}
{{- end }}
{{- range $kind := list "replyTokenKeys" "unsubscribeKey" "adminToken" }}
{{- $s := index $.Values.secrets $kind }}
{{- if and $s.value $s.existingSecret }}
{{- fail (printf "secrets.%s: set value or existingSecret, not both" $kind) }}
{{- end }}
{{- end }}
{{- range $kind := list "dkim" "smtp" }}
{{- $s := index $.Values.secrets $kind }}
{{- if and (or $s.keys $s.passwords) $s.existingSecret }}
{{- fail (printf "secrets.%s: set the files or existingSecret, not both" $kind) }}
{{- end }}
{{- end }}
{{- if not .Values.allowDevelopmentKeys }}
{{- range $kind := list "replyTokenKeys" "unsubscribeKey" }}
{{- if not (include "chattermail.secretName" (list $ $kind)) }}
{{- fail (printf "secrets.%s: required; without it chattermail signs with a public development key anyone can forge (set allowDevelopmentKeys=true for a throw-away install)" $kind) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "redis: set url or existingSecret, not both" }}
{{- end }}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "redis.url (or redis.existingSecret) is required: the quota service keeps its counters in Redis" }}
{{- end }}
{{- range $name := splitList " " (include "chattermail.components" .) }}
{{- $c := index $.Values $name }}
{{- if and $c.autoscaling.enabled (gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas)) }}
{{- fail (printf "%s.autoscaling: minReplicas %v is above maxReplicas %v" $name $c.autoscaling.minReplicas $c.autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
autoscaling/v2 behavior of a service's HPA (also KEDA's): the value's
behavior, or up fast (4 pods or doubling a minute, whichever adds more)
and down slowly (2 pods a minute after 5 minutes of lower load).
*/}}
{{- define "chattermail.hpaBehavior" -}}
{{- if .behavior }}
{{- toYaml .behavior }}
{{- else -}}
scaleUp:
  stabilizationWindowSeconds: 0
  selectPolicy: Max
  policies:
    - {type: Pods, value: 4, periodSeconds: 60}
    - {type: Percent, value: 100, periodSeconds: 60}
scaleDown:
  stabilizationWindowSeconds: 300
  selectPolicy: Max
  policies:
    - {type: Pods, value: 2, periodSeconds: 60}
{{- end }}
{{- end }}
