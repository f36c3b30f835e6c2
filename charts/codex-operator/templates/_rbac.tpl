{{/* What the operator calls, rule by rule, each with the code path that needs it. No wildcards, and no
     verb the operator does not use: tests/unit/test_chart.py checks, and the cluster suite runs the
     operator under exactly these rules. */}}

{{/* Rules in the namespaces where jobs live: one ClusterRole when all namespaces are watched, a Role
     in each of watchNamespaces otherwise. */}}
{{- define "codex-operator.jobRules" -}}
# the jobs' informer (informer.JOBS: list + watch; Kube.serves_jobs lists one at start to find the CRD);
# Kube.get_job reads one afresh; the TTL (Operator._expire) deletes a finished job
- apiGroups: [codex.ml]
  resources: [codextrainingjobs]
  verbs: [get, list, watch, delete]
# Kube.patch_status: phase, conditions, progress, checkpoint (merge patches of the status subresource)
- apiGroups: [codex.ml]
  resources: [codextrainingjobs/status]
  verbs: [patch]
# children carry ownerReferences with blockOwnerDeletion (builders.owner_reference): where the API
# server enforces OwnerReferencesPermissionEnforcement, that needs update on the owner's finalizers
- apiGroups: [codex.ml]
  resources: [codextrainingjobs/finalizers]
  verbs: [update]
# attempt Jobs: Kube.create, Kube.get (whose a taken name is; why no pods start), Kube.list_jobs, their
# informer (Operator.take_watched), Kube.set_suspend (suspend/resume a job that is not Kueue's)
# and Kube.delete_attempt (a failed job's live attempt is stopped)
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, patch, delete]
# trainer pods: the pods' informer (informer.Informer: rank 0's IP, why pods wait) and Kube.list_pods
# (how an attempt ended: rank 0's final numbers, which pod failed)
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Kueue's Workloads of a queued attempt (Kube.list_workloads): why it waits, or why it was preempted, in
# Kueue's words; read only (where Kueue is not installed the list is refused and nothing is said)
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list]
{{- if eq .Values.progress.via "proxy" }}
# Kube.pod_metrics_via_proxy: rank 0's /metrics through the API server (progress.via: proxy)
- apiGroups: [""]
  resources: [pods/proxy]
  verbs: [get]
{{- end }}
# the checkpoint volume (Operator.ensure_children: create, read back whose it is, and patch its
# ownerReferences when storage.retain changes)
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [create, get, patch]
# the rendezvous Service and each attempt's job file (Operator.ensure_children, Operator._start_attempt:
# create, read back whose a taken name is) and their informers (their deletion is noticed)
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [create, get, list, watch]
# Operator._start_attempt replaces a job file an earlier, refused try left, when the spec changed since
- apiGroups: [""]
  resources: [configmaps]
  verbs: [delete]
# Kube.post_event (Operator._post_event): one Event per transition, posted to core/v1 (never patched
# them); Kube.list_events reads the Job controller's FailedCreate on an attempt whose pods do not start
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end }}

{{/* The Lease of leader election (leader.Elector), in the release's namespace only. */}}
{{- define "codex-operator.leaseRules" -}}
# a standby creates the Lease when there is none (create cannot be limited to a name)
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
# leader.Elector reads the Lease, takes or renews it and hands it back (replace = update): this one only
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "codex-operator.leaseName" . }}]
  verbs: [get, update]
{{- end }}

{{- define "codex-operator.subjects" -}}
- kind: ServiceAccount
  name: {{ include "codex-operator.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
