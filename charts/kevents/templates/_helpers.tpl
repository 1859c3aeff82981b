{{/* kevents: names, labels and the rendered config shared by the templates. */}}

{{- define "kevents.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `kevents` for a release named kevents, as the names in manifests/. */}}
{{- define "kevents.fullname" -}}
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
The selector, as in manifests/base: the name only. A Deployment's selector cannot change, so the
same one lets a release take over objects that `kubectl apply -k` created.
*/}}
{{- define "kevents.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kevents.name" . }}
{{- end }}

{{- define "kevents.labels" -}}
{{ include "kevents.selectorLabels" . }}
app.kubernetes.io/part-of: kevents
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kevents.serviceAccountName" -}}
{{- default (include "kevents.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "kevents.claimName" -}}
{{- default (printf "%s-store" (include "kevents.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "kevents.clientSecretName" -}}
{{- default (printf "%s-adx" (include "kevents.fullname" .)) .Values.adx.auth.clientSecret.existingSecret }}
{{- end }}

{{- define "kevents.authMode" -}}
{{- if eq .Values.sink "adx" }}{{ .Values.adx.auth.mode }}{{ end }}
{{- end }}

{{/*
kevents.yaml: the values as kevents config keys, with `config` merged over them. The cluster
tags stay ${CLUSTER}, ${REGION} and ${ENVIRONMENT}, expanded from the -env ConfigMap as in
manifests/, and the client secret stays ${ADX_CLIENT_SECRET}: no secret in a ConfigMap.
*/}}
{{- define "kevents.config" -}}
{{- $v := .Values }}
{{- $sink := dict "type" $v.sink }}
{{- if eq $v.sink "adx" }}
{{- $adx := dict
    "ingest_endpoint" (required "adx.ingestEndpoint is required with sink: adx" $v.adx.ingestEndpoint)
    "database" $v.adx.database
    "table" $v.adx.table
    "mode" $v.adx.mode
    "format" "json" }}
{{- with $v.adx.mapping }}{{ $_ := set $adx "mapping" . }}{{ end }}
{{- with $v.adx.engineEndpoint }}{{ $_ := set $adx "engine_endpoint" . }}{{ end }}
{{- $auth := dict "mode" $v.adx.auth.mode }}
{{- if eq $v.adx.auth.mode "client_secret" }}
{{- $_ := set $auth "tenant_id" "${ADX_TENANT_ID}" }}
{{- $_ := set $auth "client_id" "${ADX_CLIENT_ID}" }}
{{- $_ := set $auth "client_secret" "${ADX_CLIENT_SECRET}" }}
{{- else if eq $v.adx.auth.mode "managed_identity" }}
{{- with $v.adx.auth.managedIdentity.clientId }}{{ $_ := set $auth "client_id" . }}{{ end }}
{{- end }}
{{- $_ := set $adx "auth" $auth }}
{{- $_ := set $sink "adx" $adx }}
{{- end }}
{{- $config := dict
    "cluster" (dict "name" "${CLUSTER}" "region" "${REGION:-}" "environment" "${ENVIRONMENT:-}")
    "leader" (dict "lease_name" $v.leaseName)
    "store" (dict "path" "/var/lib/kevents/store")
    "record" (dict "shape" $v.record.shape "extra_columns" $v.record.extraColumns)
    "sink" $sink
    "admin" (dict "listen" "0.0.0.0:9102")
    "log" (dict "level" $v.log.level "format" $v.log.format)
    "shutdown" (dict "grace_period" $v.shutdownGracePeriod) }}
{{- toYaml (mustMergeOverwrite $config (deepCopy $v.config)) }}
{{- end }}
