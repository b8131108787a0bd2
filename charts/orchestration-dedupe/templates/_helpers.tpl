{{/*
Names. The full name is capped at 40 characters so that "<fullname>-pruner" stays within the
52 characters a CronJob name may have, and every other suffixed name within 63.
*/}}
{{- define "od.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "od.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "od.admission.fullname" -}}{{ include "od.fullname" . }}-admission{{- end -}}
{{- define "od.pruner.fullname" -}}{{ include "od.fullname" . }}-pruner{{- end -}}

{{/*
The ServiceAccount a part runs as: the chart's own ("<fullname>-<part>", or serviceAccount.name)
when serviceAccount.create, else the existing one serviceAccount.name names. RBAC binds the same.
*/}}
{{- define "od.admission.serviceAccountName" -}}
{{- $sa := .Values.admission.serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "od.admission.fullname" .) $sa.name -}}
{{- else -}}
{{- required "admission.serviceAccount.name is required when admission.serviceAccount.create is false (the existing ServiceAccount the webhook runs as)" $sa.name -}}
{{- end -}}
{{- end -}}
{{- define "od.pruner.serviceAccountName" -}}
{{- $sa := .Values.pruner.serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "od.pruner.fullname" .) $sa.name -}}
{{- else -}}
{{- required "pruner.serviceAccount.name is required when pruner.serviceAccount.create is false (the existing ServiceAccount the pruner runs as)" $sa.name -}}
{{- end -}}
{{- end -}}
{{- define "od.tlsSecretName" -}}
{{- if eq .Values.admission.tls.mode "secret" -}}
{{- required "admission.tls.secret.name is required when admission.tls.mode is secret" .Values.admission.tls.secret.name -}}
{{- else -}}
{{- include "od.fullname" . }}-tls
{{- end -}}
{{- end -}}
{{- define "od.certManager.servingCertificate" -}}{{ include "od.fullname" . }}-serving{{- end -}}

{{/* The webhook's DNS names, as the API server reaches it through the Service. */}}
{{- define "od.admission.dnsNames" -}}
{{- $svc := include "od.admission.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}

{{/* Labels. Selector labels never include anything that changes between chart versions. */}}
{{- define "od.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "od.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: orchestration-dedupe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "od.selectorLabels" -}}
app.kubernetes.io/name: {{ include "od.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Call with (dict "ctx" $ "component" "admission"). */}}
{{- define "od.componentLabels" -}}
{{ include "od.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "od.componentSelectorLabels" -}}
{{ include "od.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "od.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The container environment: DATABASE_URL from the Secret, then the variables derived from
values (.derived, plus the database CA path when database.tls.caSecretRef is set), overlaid by
env.vars and then by the component's env.vars (.overlay); sorted, so the list is stable for
server-side apply and diffs. Then the component's extraEnv (.extra, EnvVar objects, in the
given order). Names must be unique (server-side apply rejects duplicates): an extraEnv name the
chart already sets, or one listed twice, fails the render (.part names the values key).
Call with (dict "ctx" $ "derived" (dict ...) "overlay" .Values.<part>.env.vars
"extra" .Values.<part>.extraEnv "part" "<part>").
*/}}
{{- define "od.env" -}}
{{- $vars := dict -}}
{{- range $k, $v := .derived }}{{ $_ := set $vars $k $v }}{{ end -}}
{{- if include "od.databaseCa.enabled" .ctx -}}
{{- $_ := set $vars "JANGAR_ORCHESTRATION_DEDUPE_DATABASE_CA" (include "od.databaseCa.file" .ctx) -}}
{{- end -}}
{{- range $k, $v := .ctx.Values.env.vars }}{{ $_ := set $vars $k $v }}{{ end -}}
{{- range $k, $v := .overlay }}{{ $_ := set $vars $k $v }}{{ end -}}
{{- $seen := dict "DATABASE_URL" "database.secretRef" -}}
{{- range $k := keys $vars }}{{ $_ := set $seen $k "the chart (derived values, env.vars or the part's env.vars)" }}{{ end -}}
{{- $part := .part -}}
{{- range .extra -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "%s.extraEnv: %s is already set by %s; server-side apply rejects duplicate env names, so set it there (or remove it from %s.extraEnv)" $part .name (get $seen .name) $part) -}}
{{- end -}}
{{- $_ := set $seen .name (printf "an earlier %s.extraEnv entry" $part) -}}
{{- end -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.secretRef.name is required" .ctx.Values.database.secretRef.name }}
      key: {{ required "database.secretRef.key is required" .ctx.Values.database.secretRef.key }}
{{- range $k := keys $vars | sortAlpha }}
- name: {{ $k }}
  value: {{ index $vars $k | toString | quote }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The CA bundle PostgreSQL's certificate must chain to (database.tls.caSecretRef): one key of a
Secret, mounted read-only at a fixed path. Each helper renders nothing when no name is set.
*/}}
{{- define "od.databaseCa.enabled" -}}
{{- if .Values.database.tls.caSecretRef.name }}true{{ end -}}
{{- end -}}
{{- define "od.databaseCa.dir" -}}/etc/orchestration-dedupe/database-ca{{- end -}}
{{- define "od.databaseCa.file" -}}{{ include "od.databaseCa.dir" . }}/ca.crt{{- end -}}

{{- define "od.databaseCa.volumeMounts" -}}
{{- if include "od.databaseCa.enabled" . -}}
- name: database-ca
  mountPath: {{ include "od.databaseCa.dir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "od.databaseCa.volumes" -}}
{{- if include "od.databaseCa.enabled" . -}}
- name: database-ca
  secret:
    secretName: {{ .Values.database.tls.caSecretRef.name }}
    defaultMode: 0440
    items:
      - key: {{ required "database.tls.caSecretRef.key is required" .Values.database.tls.caSecretRef.key | quote }}
        path: ca.crt
{{- end -}}
{{- end -}}

{{/*
mTLS (admission.tls.clientCA): the CA bundle the API server's client certificate must chain to,
one key of a Secret or ConfigMap, mounted read-only at a fixed path. Each helper renders
nothing when no name is set.
*/}}
{{- define "od.clientCa.enabled" -}}
{{- if .Values.admission.tls.clientCA.name }}true{{ end -}}
{{- end -}}
{{- define "od.clientCa.dir" -}}/etc/orchestration-dedupe/client-ca{{- end -}}
{{- define "od.clientCa.file" -}}{{ include "od.clientCa.dir" . }}/ca.crt{{- end -}}

{{- define "od.clientCa.volumeMounts" -}}
{{- if include "od.clientCa.enabled" . -}}
- name: client-ca
  mountPath: {{ include "od.clientCa.dir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "od.clientCa.volumes" -}}
{{- if include "od.clientCa.enabled" . -}}
{{- $ref := .Values.admission.tls.clientCA -}}
{{- $items := list (dict "key" (required "admission.tls.clientCA.key is required" $ref.key) "path" "ca.crt") -}}
- name: client-ca
  {{- if eq $ref.kind "ConfigMap" }}
  configMap:
    name: {{ $ref.name }}
  {{- else }}
  secret:
    secretName: {{ $ref.name }}
  {{- end }}
    defaultMode: 0440
    items:
      {{- toYaml $items | nindent 6 }}
{{- end -}}
{{- end -}}

{{/* The webhook's read access to OrchestrationRuns (admission-rbac.yaml). */}}
{{- define "od.admission.rbacRules" -}}
- apiGroups: ["orchestration.proompteng.ai"]
  resources: ["orchestrationruns"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/*
The pod and container security contexts: the part's podSecurityContext / securityContext value
as a whole object when set (never merged: an operator must be able to leave runAsUser out, as
OpenShift's restricted SCC requires), else the restricted ones below (Pod Security Standards
"restricted"). Call with the value: (include "od.podSecurityContext" .Values.<part>.podSecurityContext).
*/}}
{{- define "od.podSecurityContext" -}}
{{- if . -}}
{{ toYaml . }}
{{- else -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- end -}}

{{- define "od.containerSecurityContext" -}}
{{- if . -}}
{{ toYaml . }}
{{- else -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- end -}}

{{/* Cross-field checks the schema cannot express. */}}
{{- define "od.validate" -}}
{{- if .Values.admission.enabled -}}
{{- if ge (int64 .Values.admission.storeTimeoutMs) (mul (int64 .Values.admission.timeoutSeconds) 1000) -}}
{{- fail (printf "admission.storeTimeoutMs (%d) must be below admission.timeoutSeconds (%d s): a slow store must turn into a 503 the API server sees, not a timed-out call" (int64 .Values.admission.storeTimeoutMs) (int64 .Values.admission.timeoutSeconds)) -}}
{{- end -}}
{{- if .Values.admission.hostNetwork -}}
{{- /* Ports the kubelet and kube-proxy hold on every node. */ -}}
{{- $taken := dict "10248" "the kubelet's health port" "10249" "kube-proxy's metrics port" "10250" "the kubelet's API port" "10255" "the kubelet's read-only port" "10256" "kube-proxy's health port" -}}
{{- range $key := list "port" "metricsPort" -}}
{{- $port := index $.Values.admission $key | int64 | toString -}}
{{- if hasKey $taken $port -}}
{{- fail (printf "admission.hostNetwork binds admission.%s on the node itself, and %s is %s: choose a port free on every node (e.g. admission.port=9443, admission.metricsPort=9091)" $key $port (get $taken $port)) -}}
{{- end -}}
{{- end -}}
{{- if eq (int64 .Values.admission.port) (int64 .Values.admission.metricsPort) -}}
{{- fail "admission.port and admission.metricsPort must differ" -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.admission.tls.mode "secret") (not .Values.admission.tls.secret.caBundle) -}}
{{- fail "admission.tls.secret.caBundle is required when admission.tls.mode is secret (base64 of the PEM CA that signed the Secret's certificate)" -}}
{{- end -}}
{{- $np := .Values.networkPolicy -}}
{{- if $np.enabled -}}
{{- $listed := or $np.apiServer.cidrs $np.webhookFrom -}}
{{- if and $np.webhookAllowAllSources $listed -}}
{{- fail "networkPolicy.webhookAllowAllSources admits every source on the webhook port, so networkPolicy.apiServer.cidrs and networkPolicy.webhookFrom would have no effect: set one or the other" -}}
{{- end -}}
{{- if not (or $np.webhookAllowAllSources $listed) -}}
{{- fail "networkPolicy.enabled needs the webhook's callers: set networkPolicy.apiServer.cidrs to the addresses the API server calls from (and/or networkPolicy.webhookFrom), or networkPolicy.webhookAllowAllSources=true to admit any source explicitly. An empty source list would either open the port to every pod, which can then forge reviews, or shut out the API server (docs/OPERATIONS.md, \"Threats\")" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if .Values.pruner.enabled -}}
{{- if ge (int64 .Values.pruner.maxRuntimeSeconds) (int64 .Values.pruner.activeDeadlineSeconds) -}}
{{- fail (printf "pruner.maxRuntimeSeconds (%d) must be below pruner.activeDeadlineSeconds (%d), so the pruner stops and reports before Kubernetes kills it" (int64 .Values.pruner.maxRuntimeSeconds) (int64 .Values.pruner.activeDeadlineSeconds)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Egress both parts need: DNS and PostgreSQL. */}}
{{- define "od.networkPolicy.egress" -}}
{{- $np := .Values.networkPolicy -}}
# DNS, to resolve the database host.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# PostgreSQL.
- ports:
    - port: {{ $np.database.port }}
      protocol: TCP
  {{- with $np.database.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
The namespaces whose runs are checked: admission.namespaces, or every namespace. Shared by
the webhook registrations and the delivery-key policy's binding, so they cover the same runs.
*/}}
{{- define "od.admission.namespaceSelector" -}}
{{- if .Values.admission.namespaces }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values:
        {{- range .Values.admission.namespaces }}
        - {{ . | quote }}
        {{- end }}
{{- else }}
namespaceSelector: {}
{{- end }}
{{- end -}}

{{/*
Annotations that apply a webhook registration only once a webhook pod can answer (see
docs/OPERATIONS.md, "Install order"): an Argo CD sync wave after the Deployment's (Argo CD
waits for each wave to be healthy, and a Deployment is healthy once Available), and, with
admission.registration.helmHook, a Helm post-install/post-upgrade hook (after the release's
other objects, and after they are ready under `helm install --wait`).
*/}}
{{- define "od.admission.registrationAnnotations" -}}
{{- $r := .Values.admission.registration }}
argocd.argoproj.io/sync-wave: {{ $r.syncWave | quote }}
{{- if $r.helmHook }}
helm.sh/hook: post-install,post-upgrade
helm.sh/hook-weight: "10"
helm.sh/hook-delete-policy: before-hook-creation
{{- end }}
{{- end -}}
