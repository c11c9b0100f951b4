{{/*
Template helpers, all prefixed `tlsid.`: the chart name, the full name every
resource is named after, labels, and the controller's image and
ServiceAccount.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "tlsid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>". 63 characters at most (a
DNS label).
*/}}
{{- define "tlsid.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "tlsid.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object the chart makes. */}}
{{- define "tlsid.labels" -}}
app.kubernetes.io/name: {{ include "tlsid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tlsid
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "tlsid.chart" . }}
{{- end -}}

{{/*
Labels selecting the controller's pods. Immutable in a Deployment's selector:
never add to these.
*/}}
{{- define "tlsid.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tlsid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* Labels on the controller's objects: the common labels plus its component. */}}
{{- define "tlsid.controller.labels" -}}
{{ include "tlsid.labels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* Labels on the CustomResourceDefinition. */}}
{{- define "tlsid.crd.labels" -}}
{{ include "tlsid.labels" . }}
app.kubernetes.io/component: crds
{{- end -}}

{{/* The ServiceAccount the controller runs as. */}}
{{- define "tlsid.controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tlsid.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The controller image: repository@digest, or repository:tag. */}}
{{- define "tlsid.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (required "image.tag or image.digest is required" .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The demo workloads' image: demo.image, else the controller's. */}}
{{- define "tlsid.demoImage" -}}
{{- default (include "tlsid.image" .) .Values.demo.image -}}
{{- end -}}

{{/*
The admission webhook's name: its Service and TlsIdentity (release
namespace) and its ValidatingWebhookConfiguration (cluster-scoped, so named
after the install).
*/}}
{{- define "tlsid.webhook.name" -}}
{{ .Values.install.name }}-webhook
{{- end }}
