{{- define "mlcycle.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mlcycle.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mlcycle.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mlcycle.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Every container: non-root, no privilege escalation, no capabilities, a read-only root
filesystem (what it writes goes to the emptyDirs of mlcycle.writableMounts), the runtime's
seccomp profile: Pod Security "restricted". */}}
{{- define "mlcycle.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.securityContext.runAsUser }}
  runAsGroup: {{ .Values.securityContext.runAsGroup }}
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "mlcycle.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.securityContext.runAsUser }}
  runAsGroup: {{ .Values.securityContext.runAsGroup }}
  fsGroup: {{ .Values.securityContext.fsGroup }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* The writable paths of a container whose root filesystem is read-only: temporary files and
HOME (the libraries' caches and configuration); a Ray node also its shared memory. .shm: Ray. */}}
{{- define "mlcycle.writableVolumes" -}}
volumes:
  - {name: tmp, emptyDir: {}}
  - {name: home, emptyDir: {}}
  {{- if .shm }}
  - {name: shm, emptyDir: {medium: Memory}}
  {{- end }}
{{- end -}}

{{- define "mlcycle.writableMounts" -}}
volumeMounts:
  - {name: tmp, mountPath: /tmp}
  - {name: home, mountPath: /home/mlcycle}
  {{- if .shm }}
  - {name: shm, mountPath: /dev/shm}
  {{- end }}
{{- end -}}

{{/* The database and S3 credentials (every mlcycle container) and the settings. */}}
{{- define "mlcycle.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "mlcycle.fullname" . }}-settings
  - secretRef:
      name: {{ .Values.existingSecret }}
{{- end -}}

{{/* One Ray container (head or worker): .root, .resources, .ports (head only). */}}
{{- define "mlcycle.rayContainer" -}}
- name: ray
  image: {{ include "mlcycle.image" .root.Values.images.serving | quote }}
  imagePullPolicy: {{ .root.Values.images.pullPolicy }}
  {{- include "mlcycle.env" .root | nindent 2 }}
    # a Ray node: the cluster's token and the endpoints' API keys
    - secretRef:
        name: {{ .root.Values.rayTokenSecret }}
    - secretRef:
        name: {{ .root.Values.servingKeysSecret }}
  # Serve as `mlcycle serve start` runs it (serving/deploy.py serve_env): HAProxy as the ingress
  # proxy, one thread; user code on the replicas' event loops
  env:
    - name: RAY_SERVE_ENABLE_HA_PROXY
      value: "1"
    - name: RAY_SERVE_THROUGHPUT_OPTIMIZED
      value: "1"
    - name: RAY_SERVE_HAPROXY_NBTHREAD
      value: "1"
    - name: RAY_SERVE_HAPROXY_BINARY_PATH
      value: /opt/venv/bin/mlcycle-haproxy
    # the replicas read the registry as mlcycle_serving (it cannot write MLflow's tables)
    - name: MLCYCLE_DATABASE_URL
      valueFrom:
        secretKeyRef: {name: {{ .root.Values.serving.databaseSecret }}, key: MLCYCLE_DATABASE_URL}
  {{- if .ports }}
  ports:
    - {name: gcs, containerPort: 6379}
    - {name: dashboard, containerPort: 8265}
    - {name: client, containerPort: 10001}
    - {name: serve, containerPort: 8000}
  {{- end }}
  # The raylet's health (and the GCS's on the head), as KubeRay itself probes them.
  readinessProbe:
    exec:
      command: ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:52365/api/local_raylet_healthz', timeout=2)"]
    periodSeconds: 10
    timeoutSeconds: 5
  livenessProbe:
    exec:
      command: ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:52365/api/local_raylet_healthz', timeout=2)"]
    initialDelaySeconds: 30
    periodSeconds: 20
    timeoutSeconds: 5
    failureThreshold: 6
  resources:
    {{- toYaml .resources | nindent 4 }}
  {{- include "mlcycle.writableMounts" (dict "shm" true) | nindent 2 }}
  {{- include "mlcycle.containerSecurity" .root | nindent 2 }}
{{- end -}}

{{/* A Ray pod's spec (head or worker group): .root, .account, .ports, .resources, .gpu. */}}
{{- define "mlcycle.rayPodSpec" -}}
serviceAccountName: {{ .account }}
automountServiceAccountToken: {{ and .ports .root.Values.serving.autoscaling.enabled | default false }}
{{- include "mlcycle.pullSecrets" .root }}
{{- include "mlcycle.podSecurity" .root | nindent 0 }}
{{- if .gpu }}
{{- with .root.Values.gpu.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.gpu.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- include "mlcycle.writableVolumes" (dict "shm" true) | nindent 0 }}
containers:
  {{- include "mlcycle.rayContainer" (dict "root" .root "resources" .resources "ports" .ports) | nindent 2 }}
{{- end -}}


{{/* The registry's pull secrets, in every pod of the chart. */}}
{{- define "mlcycle.pullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A worker group's replicas within its bounds, or a clear failure naming the values. */}}
{{- define "mlcycle.checkReplicas" -}}
{{- if gt (int .group.minReplicas) (int .group.maxReplicas) -}}
{{- fail (printf "serving.%s: minReplicas (%d) is greater than maxReplicas (%d)" .name (int .group.minReplicas) (int .group.maxReplicas)) -}}
{{- end -}}
{{- if or (lt (int .group.replicas) (int .group.minReplicas)) (gt (int .group.replicas) (int .group.maxReplicas)) -}}
{{- fail (printf "serving.%s: replicas (%d) is outside minReplicas..maxReplicas (%d..%d)" .name (int .group.replicas) (int .group.minReplicas) (int .group.maxReplicas)) -}}
{{- end -}}
{{- end -}}

{{/* Where the steps and Airflow's failure notifier send their events: alertmanager.url, else the
chart's Alertmanager (prometheus-operator's Service alertmanager-operated) where enabled, else "". */}}
{{- define "mlcycle.alertmanagerUrl" -}}
{{- if .Values.alertmanager.url -}}
{{ .Values.alertmanager.url }}
{{- else if .Values.alertmanager.enabled -}}
{{ printf "http://alertmanager-operated.%s.svc:9093" .Release.Namespace }}
{{- end -}}
{{- end -}}
