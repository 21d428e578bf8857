{{/*
The Deployment of one service, shared by all four: (list $ "sender").
What differs between services is data: the env, args, ports, volumes and
secrets below, chosen by name.
*/}}
{{- define "chattermail.deployment" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $c := index $root.Values $name }}
{{- $paths := include "chattermail.paths" $root | fromYaml }}
{{- $smtpIn := and (eq $name "ingest") $root.Values.inboundSMTP.enabled }}
{{- /* Secret files this service reads: kind → [env var, file name]. */}}
{{- $files := dict }}
{{- if has $name (list "ingest" "rewrite") }}
{{- $_ := set $files "replyTokenKeys" (list "REPLY_TOKEN_KEYS_FILE" "keys") }}
{{- end }}
{{- if eq $name "ingest" }}
{{- $_ := set $files "unsubscribeKey" (list "UNSUBSCRIBE_KEY_FILE" "key") }}
{{- end }}
{{- if eq $name "quota" }}
{{- $_ := set $files "adminToken" (list "ADMIN_TOKEN_FILE" "token") }}
{{- end }}
{{- $smtpSecret := include "chattermail.secretName" (list $root "smtp") }}
{{- $dkimSecret := "" }}
{{- if eq $name "sender" }}
{{- $dkimSecret = include "chattermail.secretName" (list $root "dkim") }}
{{- end }}
{{- $secretData := list $root.Values.secrets.smtp $root.Values.nats.existingSecret }}
{{- range $kind, $f := $files }}
{{- $secretData = append $secretData (index $root.Values.secrets $kind) }}
{{- end }}
{{- if eq $name "quota" }}
{{- $secretData = append $secretData $root.Values.redis }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "chattermail.resourceName" (list $root $name) }}
  labels:
    {{- include "chattermail.componentLabels" (list $root $name) | nindent 4 }}
spec:
  {{- if not (include "chattermail.autoscaled" (list $root $name)) }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "chattermail.selectorLabels" (list $root $name) | nindent 6 }}
  strategy:
    {{- toYaml ($c.strategy | default (dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" "25%" "maxUnavailable" 0))) | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "chattermail.selectorLabels" (list $root $name) | nindent 8 }}
        {{- with merge (deepCopy ($c.podLabels | default dict)) ($root.Values.podLabels | default dict) }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Roll the pods when the tenants file or a secret they read changes
        # (DKIM keys excepted: the sender reloads them by itself).
        checksum/config: {{ include "chattermail.tenantsFile" $root | sha256sum }}
        checksum/secrets: {{ toJson $secretData | sha256sum }}
        {{- with merge (deepCopy ($c.podAnnotations | default dict)) ($root.Values.podAnnotations | default dict) }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "chattermail.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds | default 30 }}
      {{- with ($c.priorityClassName | default $root.Values.priorityClassName) }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with ($c.nodeSelector | default $root.Values.nodeSelector) }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with ($c.tolerations | default $root.Values.tolerations) }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with ($c.affinity | default $root.Values.affinity) }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $root.Values.topologySpread.enabled }}
      topologySpreadConstraints:
        {{- range $root.Values.topologySpread.topologyKeys }}
        - topologyKey: {{ . }}
          maxSkew: {{ $root.Values.topologySpread.maxSkew }}
          whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "chattermail.selectorLabels" (list $root $name) | nindent 14 }}
          matchLabelKeys: ["pod-template-hash"]
        {{- end }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "chattermail.image" (list $root $name) | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          {{- $args := $c.args | default list }}
          {{- if ne $name "sender" }}
          {{- $args = prepend $args (printf "-workers=%v" $c.workers) }}
          {{- end }}
          {{- with $args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          env:
            - name: NATS_URL
              {{- if $root.Values.nats.existingSecret }}
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.nats.existingSecret }}
                  key: {{ $root.Values.nats.existingSecretKey }}
              {{- else }}
              value: {{ $root.Values.nats.url | quote }}
              {{- end }}
            - name: NATS_STREAM_REPLICAS
              value: {{ $root.Values.nats.streamReplicas | quote }}
            - name: CHATTERMAIL_CONFIG
              value: {{ $paths.configFile }}
            - name: ADMIN_ADDR
              value: {{ printf ":%v" $root.Values.adminPort | quote }}
            - name: LOG_LEVEL
              value: {{ $root.Values.logLevel | quote }}
            - name: GOMEMLIMIT
              valueFrom:
                resourceFieldRef:
                  containerName: {{ $name }}
                  resource: limits.memory
            {{- range $kind, $f := $files }}
            {{- if include "chattermail.secretName" (list $root $kind) }}
            - name: {{ index $f 0 }}
              value: {{ printf "%s/%s" (get $paths $kind) (index $f 1) }}
            {{- end }}
            {{- end }}
            {{- if eq $name "ingest" }}
            - name: HTTP_ADDR
              value: {{ printf ":%v" $root.Values.api.containerPort | quote }}
            - name: PUBLIC_URL
              value: {{ $root.Values.publicURL | quote }}
            {{- if $smtpIn }}
            - name: SMTP_ADDR
              value: {{ printf ":%v" $root.Values.inboundSMTP.containerPort | quote }}
            {{- with $root.Values.inboundSMTP.hostname }}
            - name: SMTP_HOSTNAME
              value: {{ . | quote }}
            {{- end }}
            {{- if $root.Values.inboundSMTP.tlsSecretName }}
            - name: SMTP_TLS_CERT_FILE
              value: {{ $paths.smtpTLS }}/tls.crt
            - name: SMTP_TLS_KEY_FILE
              value: {{ $paths.smtpTLS }}/tls.key
            {{- end }}
            {{- end }}
            {{- end }}
            {{- if and (eq $name "rewrite") $c.dnsServers }}
            - name: DNS_SERVERS
              value: {{ $c.dnsServers | quote }}
            {{- end }}
            {{- if eq $name "quota" }}
            - name: REDIS_URL
              valueFrom:
                secretKeyRef:
                  name: {{ include "chattermail.redisSecretName" $root }}
                  key: {{ if $root.Values.redis.existingSecret }}{{ $root.Values.redis.existingSecretKey }}{{ else }}url{{ end }}
            {{- end }}
            {{- if eq $name "sender" }}
            - name: SENDER_WORKERS
              value: {{ $c.workers | quote }}
            {{- with $c.relayhost }}
            - name: RELAYHOST
              value: {{ . | quote }}
            {{- end }}
            {{- with $c.heloName }}
            - name: SENDER_HELO_NAME
              value: {{ . | quote }}
            {{- end }}
            {{- end }}
            {{- with $root.Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $c.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: admin
              containerPort: {{ $root.Values.adminPort }}
              protocol: TCP
            {{- if eq $name "ingest" }}
            - name: http
              containerPort: {{ $root.Values.api.containerPort }}
              protocol: TCP
            {{- if $smtpIn }}
            - name: smtp
              containerPort: {{ $root.Values.inboundSMTP.containerPort }}
              protocol: TCP
            {{- end }}
            {{- end }}
          # The admin port opens once NATS answered and the streams exist:
          # give a slow start a minute before liveness counts.
          startupProbe:
            httpGet: {path: /livez, port: admin}
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet: {path: /livez, port: admin}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          # /readyz: NATS (and Redis for quota) answer.
          readinessProbe:
            httpGet: {path: /readyz, port: admin}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: {{ $paths.config }}
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if $smtpSecret }}
            - name: smtp-passwords
              mountPath: {{ $paths.smtp }}
              readOnly: true
            {{- end }}
            {{- if $dkimSecret }}
            - name: dkim-keys
              mountPath: {{ $paths.dkim }}
              readOnly: true
            {{- end }}
            {{- range $kind, $f := $files }}
            {{- if include "chattermail.secretName" (list $root $kind) }}
            - name: {{ kebabcase $kind }}
              mountPath: {{ get $paths $kind }}
              readOnly: true
            {{- end }}
            {{- end }}
            {{- if and $smtpIn $root.Values.inboundSMTP.tlsSecretName }}
            - name: smtp-tls
              mountPath: {{ $paths.smtpTLS }}
              readOnly: true
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "chattermail.resourceName" (list $root "config") }}
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if $smtpSecret }}
        - name: smtp-passwords
          secret:
            secretName: {{ $smtpSecret }}
            defaultMode: 288 # 0440: the pod's group (fsGroup) reads
        {{- end }}
        {{- if $dkimSecret }}
        # The whole Secret as a directory (no subPath), so a changed key
        # reaches the running senders.
        - name: dkim-keys
          secret:
            secretName: {{ $dkimSecret }}
            defaultMode: 288
        {{- end }}
        {{- range $kind, $f := $files }}
        {{- $secret := include "chattermail.secretName" (list $root $kind) }}
        {{- if $secret }}
        - name: {{ kebabcase $kind }}
          secret:
            secretName: {{ $secret }}
            defaultMode: 288
            items:
              - key: {{ include "chattermail.secretKey" (list $root $kind) }}
                path: {{ index $f 1 }}
        {{- end }}
        {{- end }}
        {{- if and $smtpIn $root.Values.inboundSMTP.tlsSecretName }}
        - name: smtp-tls
          secret:
            secretName: {{ $root.Values.inboundSMTP.tlsSecretName }}
            defaultMode: 288
            items:
              - {key: tls.crt, path: tls.crt}
              - {key: tls.key, path: tls.key}
        {{- end }}
{{- end }}
