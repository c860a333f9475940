{{/* Names: the release name alone when it already says tidegate, so that
`helm install tidegate` names every object as `kubectl apply -k deploy/` does. */}}
{{- define "tidegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tidegate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tidegate.serviceAccountName" -}}
{{- default (include "tidegate.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "tidegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tidegate.labels" -}}
{{ include "tidegate.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tidegate.tlsSecret" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "tidegate.fullname" .) -}}
{{- else -}}
{{- fail "tls.enabled needs tls.existingSecret or tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}

{{- define "tidegate.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* The `state` setting: `memory`, or the Redis URL with the password, which
Kubernetes substitutes from the REDIS_PASSWORD variable ($(VAR) in a value). */}}
{{- define "tidegate.state" -}}
{{- $redis := .Values.state.redis -}}
{{- if eq .Values.state.backend "memory" -}}
memory
{{- else if eq .Values.state.backend "redis" -}}
{{- $url := required "state.redis.url is needed with state.backend: redis" $redis.url -}}
{{- if $redis.password.existingSecret -}}
{{- $parts := regexSplit "://" $url 2 -}}
{{- if ne (len $parts) 2 -}}{{- fail (printf "state.redis.url %q has no scheme" $url) -}}{{- end -}}
{{- printf "%s://%s:$(REDIS_PASSWORD)@%s" (index $parts 0) $redis.username (index $parts 1) -}}
{{- else -}}
{{- $url -}}
{{- end -}}
{{- else -}}
{{- fail (printf "state.backend must be memory or redis, not %q" .Values.state.backend) -}}
{{- end -}}
{{- end -}}

{{/* The authenticators, as JSON: {"config": <the auth setting>, "files": [{secret,
key, path}], "env": [{name, secret, key}]}. Secret references in the values become
file paths under /etc/tidegate/auth (files) or $(VAR) references (basic users'
hashes, which tidegate takes inline); the deployment mounts and declares them. */}}
{{- define "tidegate.auth" -}}
{{- $files := list -}}
{{- $env := list -}}
{{- $authenticators := dict -}}
{{- range $name, $spec := .Values.auth.authenticators -}}
{{- $spec = deepCopy $spec -}}
{{- range $kind, $settings := $spec -}}
{{- if eq $kind "bearer" -}}
{{- $tokens := dict -}}
{{- range $source, $ref := $settings.tokens -}}
{{- if kindIs "map" $ref -}}
{{- $path := printf "%s/%s" $name $source -}}
{{- $files = append $files (dict "secret" (required (printf "auth %s: tokens.%s.secretName" $name $source) $ref.secretName) "key" (required (printf "auth %s: tokens.%s.key" $name $source) $ref.key) "path" $path) -}}
{{- $_ := set $tokens $source (printf "/etc/tidegate/auth/%s" $path) -}}
{{- else -}}
{{- $_ := set $tokens $source $ref -}}
{{- end -}}
{{- end -}}
{{- $_ := set $settings "tokens" $tokens -}}
{{- else if or (eq $kind "standard_webhooks") (eq $kind "grafana") -}}
{{- with $settings.secret -}}
{{- $path := printf "%s/secret" $name -}}
{{- $files = append $files (dict "secret" (required (printf "auth %s: secret.secretName" $name) .secretName) "key" (required (printf "auth %s: secret.key" $name) .key) "path" $path) -}}
{{- $_ := set $settings "secret_file" (printf "/etc/tidegate/auth/%s" $path) -}}
{{- $_ := unset $settings "secret" -}}
{{- end -}}
{{- else if eq $kind "basic" -}}
{{- $users := dict -}}
{{- range $user, $ref := $settings.users -}}
{{- if kindIs "map" $ref -}}
{{- $var := printf "BASIC_AUTH_HASH_%d" (len $env) -}}
{{- $env = append $env (dict "name" $var "secret" (required (printf "auth %s: users.%s.secretName" $name $user) $ref.secretName) "key" (required (printf "auth %s: users.%s.key" $name $user) $ref.key)) -}}
{{- $_ := set $users $user (printf "$(%s)" $var) -}}
{{- else -}}
{{- $_ := set $users $user $ref -}}
{{- end -}}
{{- end -}}
{{- $_ := set $settings "users" $users -}}
{{- end -}}
{{- end -}}
{{- $_ := set $authenticators $name $spec -}}
{{- end -}}
{{- $config := dict "authenticators" $authenticators -}}
{{- with .Values.auth.default -}}{{- $_ := set $config "default" . -}}{{- end -}}
{{- with .Values.auth.endpoints -}}{{- $_ := set $config "endpoints" . -}}{{- end -}}
{{- if .Values.auth.none -}}{{- $config = "none" -}}{{- end -}}
{{- dict "config" $config "files" $files "env" $env | toJson -}}
{{- end -}}
