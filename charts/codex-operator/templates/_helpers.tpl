{{/* Names and labels shared by the templates. */}}

{{- define "codex-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "codex-operator.fullname" -}}
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

{{- define "codex-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codex-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "codex-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "codex-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: codex
{{- end }}

{{- define "codex-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "codex-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" when the replicas elect a leader: asked for, or auto with more than one replica. Two
     replicas without it would both act on every job, so that combination is refused. */}}
{{- define "codex-operator.leaderElection" -}}
{{- $enabled := .Values.leaderElection.enabled }}
{{- $on := ternary (gt (int .Values.replicaCount) 1) $enabled (eq (toString $enabled) "auto") }}
{{- if and (not $on) (gt (int .Values.replicaCount) 1) }}
{{- fail "leaderElection.enabled: false with replicaCount > 1 would let every replica act on every job: keep it auto or true" }}
{{- end }}
{{- ternary "true" "false" $on }}
{{- end }}

{{/* "true" when the job rules go in the ClusterRole: every namespace, or patterns that match namespaces
     the install cannot name. */}}
{{- define "codex-operator.clusterWide" -}}
{{- ternary "true" "false" (or (not .Values.watchNamespaces) (not (empty .Values.watchNamespacePatterns))) }}
{{- end }}

{{- define "codex-operator.leaseName" -}}
{{- default (include "codex-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The label every trainer pod carries (codex_operator.names.LABEL_JOB) and its metrics port's name
     (builders.pod_template): the PodMonitor and the NetworkPolicy select by them. */}}
{{- define "codex-operator.trainerLabel" -}}codex.ml/job-name{{- end }}
{{- define "codex-operator.trainerPortName" -}}metrics{{- end }}
