{{/* Names */}}
{{- define "courier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "courier.fullname" -}}
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

{{- define "courier.cp.fullname" -}}
{{- printf "%s-cp" (include "courier.fullname" . | trunc 60 | trimSuffix "-") -}}
{{- end -}}

{{- define "courier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels */}}
{{- define "courier.commonLabels" -}}
helm.sh/chart: {{ include "courier.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: courier
{{- end -}}

{{- define "courier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "courier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{- define "courier.labels" -}}
{{ include "courier.commonLabels" . }}
{{ include "courier.selectorLabels" . }}
{{- end -}}

{{- define "courier.cp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "courier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "courier.cp.labels" -}}
{{ include "courier.commonLabels" . }}
{{ include "courier.cp.selectorLabels" . }}
{{- end -}}

{{- define "courier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "courier.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image reference: repository[:tag][@digest]; call with (dict "image" .Values.image "root" .) */}}
{{- define "courier.image" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Is the bundled control plane deployed? enabled: true/false, or null = only without xds.address. */}}
{{- define "courier.cp.enabled" -}}
{{- $e := .Values.controlPlane.enabled -}}
{{- if kindIs "invalid" $e -}}
{{- if not .Values.xds.address -}}true{{- end -}}
{{- else if $e -}}true{{- end -}}
{{- end -}}

{{/* host:port of the xDS server the proxy uses. */}}
{{- define "courier.xds.address" -}}
{{- if .Values.xds.address -}}
{{- .Values.xds.address -}}
{{- else if include "courier.cp.enabled" . -}}
{{- printf "%s.%s.svc.%s:%d" (include "courier.cp.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.controlPlane.port) -}}
{{- else -}}
{{- fail "xds.address is required when controlPlane.enabled=false: set it to the host:port of your xDS server (or set controlPlane.enabled=true to deploy the bundled courier-cp)" -}}
{{- end -}}
{{- end -}}

{{- define "courier.xds.port" -}}
{{- $addr := include "courier.xds.address" . -}}
{{- $port := regexFind "[0-9]+$" $addr -}}
{{- if or (not $port) (not (contains ":" $addr)) -}}
{{- fail (printf "xds.address %q must be host:port" $addr) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{- define "courier.xds.host" -}}
{{- $addr := include "courier.xds.address" . -}}
{{- $port := include "courier.xds.port" . -}}
{{- trimSuffix (printf ":%s" $port) $addr | trimPrefix "[" | trimSuffix "]" -}}
{{- end -}}

{{/* Is the admin API bound to loopback only? */}}
{{- define "courier.admin.loopback" -}}
{{- $a := toString .Values.admin.address -}}
{{- if or (hasPrefix "127." $a) (eq $a "::1") (eq $a "localhost") -}}true{{- end -}}
{{- end -}}

{{/* The container port that probes and metrics use: the ready listener, else the admin. */}}
{{- define "courier.probePort" -}}
{{- if .Values.readyListener.enabled -}}ready{{- else -}}
{{- if include "courier.admin.loopback" . -}}
{{- fail "readyListener.enabled=false needs admin.address on a pod address (e.g. 0.0.0.0): kubelet probes cannot reach a loopback-only admin" -}}
{{- end -}}admin{{- end -}}
{{- end -}}

{{/* --concurrency: explicit value, else ceil(resources.limits.cpu), else empty (binary default). */}}
{{- define "courier.concurrency" -}}
{{- if not (kindIs "invalid" .Values.concurrency) -}}
{{- int .Values.concurrency -}}
{{- else -}}
{{- $cpu := "" -}}
{{- with .Values.resources -}}{{- with .limits -}}{{- with .cpu -}}{{- $cpu = toString . -}}{{- end -}}{{- end -}}{{- end -}}
{{- if $cpu -}}
{{- $n := 0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $n = div (add (int (trimSuffix "m" $cpu)) 999) 1000 -}}
{{- else -}}
{{- $n = int (ceil (float64 $cpu)) -}}
{{- end -}}
{{- max 1 $n -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The longest a terminating pod can take before courier exits by itself: the preStop hook, then
the SIGTERM drain. A request that never ends holds the drain for all of --drain-time-s (Envoy's
drain semantics: connections are asked to close, never cut), so the drain counts in full.
sigterm: preStop sleep + drain. admin: preStop drains and waits timeSeconds, then SIGTERM drains
again (what is still open). none: the SIGTERM drain.
*/}}
{{- define "courier.shutdownSeconds" -}}
{{- $drain := int .Values.drain.timeSeconds -}}
{{- if eq .Values.drain.mode "sigterm" -}}
{{- add $drain (int .Values.drain.preStopDelaySeconds) -}}
{{- else if eq .Values.drain.mode "admin" -}}
{{- mul $drain 2 -}}
{{- else -}}
{{- $drain -}}
{{- end -}}
{{- end -}}

{{/* The grace period must exceed the shutdown, or the kubelet's SIGKILL cuts the drain. */}}
{{- define "courier.terminationGracePeriodSeconds" -}}
{{- $needed := int (include "courier.shutdownSeconds" .) -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- if le $grace $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed the shutdown it covers, %d s (drain.mode %s: %s); raise it or lower drain.timeSeconds" $grace $needed .Values.drain.mode (ternary "drain.preStopDelaySeconds + drain.timeSeconds" (ternary "2 x drain.timeSeconds: the preStop wait, then the SIGTERM drain" "drain.timeSeconds" (eq .Values.drain.mode "admin")) (eq .Values.drain.mode "sigterm"))) -}}
{{- end -}}
{{- $grace -}}
{{- else -}}
{{- add $needed 10 -}}
{{- end -}}
{{- end -}}

{{/* The bootstrap ConfigMap's name. */}}
{{- define "courier.bootstrap.configMapName" -}}
{{- default (printf "%s-bootstrap" (include "courier.fullname" .)) .Values.bootstrap.existingConfigMap -}}
{{- end -}}

{{/*
The rendered Envoy v3 bootstrap, as YAML text (the ConfigMap template parses it, merges
bootstrap.overrides over it and prints it). node.id and node.cluster come from the command line
(--service-node/--service-cluster with the downward API), exactly as Envoy meshes do.
*/}}
{{- define "courier.bootstrap.rendered" -}}
{{- $xdsHost := include "courier.xds.host" . -}}
{{- $xdsPort := include "courier.xds.port" . -}}
{{- $tls := .Values.xds.tls -}}
{{- if or .Values.node.metadata .Values.node.locality }}
node:
  {{- with .Values.node.metadata }}
  metadata:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.node.locality }}
  locality:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
admin:
  address:
    socket_address:
      address: {{ .Values.admin.address | quote }}
      port_value: {{ int .Values.admin.port }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: {{ .Values.xds.setNodeOnFirstMessageOnly }}
    grpc_services:
      - envoy_grpc:
          cluster_name: xds_cluster
  cds_config:
    ads: {}
    resource_api_version: V3
    initial_fetch_timeout: {{ .Values.xds.initialFetchTimeout | quote }}
  lds_config:
    ads: {}
    resource_api_version: V3
    initial_fetch_timeout: {{ .Values.xds.initialFetchTimeout | quote }}
static_resources:
  {{- if .Values.readyListener.enabled }}
  listeners:
    - name: courier_ready
      address:
        socket_address:
          address: "0.0.0.0"
          port_value: {{ int .Values.readyListener.port }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: courier_ready
                route_config:
                  name: courier_ready
                  virtual_hosts:
                    - name: courier_ready
                      domains: ["*"]
                      routes:
                        - match:
                            path: /ready
                          route:
                            cluster: courier_admin
                        - match:
                            path: /stats/prometheus
                          route:
                            cluster: courier_admin
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  {{- end }}
  clusters:
    {{- if .Values.readyListener.enabled }}
    - name: courier_admin
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: courier_admin
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: {{ if include "courier.admin.loopback" . }}{{ .Values.admin.address | quote }}{{ else }}"127.0.0.1"{{ end }}
                      port_value: {{ int .Values.admin.port }}
    {{- end }}
    - name: xds_cluster
      type: {{ .Values.xds.clusterType }}
      connect_timeout: {{ .Values.xds.connectTimeout | quote }}
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {}
      load_assignment:
        cluster_name: xds_cluster
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: {{ $xdsHost | quote }}
                      port_value: {{ $xdsPort }}
      {{- if $tls.enabled }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: {{ default $xdsHost $tls.sni | quote }}
          common_tls_context:
            {{- if $tls.mtls }}
            tls_certificates:
              - certificate_chain:
                  filename: {{ printf "%s/tls.crt" $tls.mountPath | quote }}
                private_key:
                  filename: {{ printf "%s/tls.key" $tls.mountPath | quote }}
            {{- end }}
            validation_context:
              trusted_ca:
                filename: {{ printf "%s/ca.crt" $tls.mountPath | quote }}
              {{- with $tls.subjectAltNames }}
              match_typed_subject_alt_names:
                {{- range . }}
                - san_type: DNS
                  matcher:
                    exact: {{ . | quote }}
                {{- end }}
              {{- end }}
      {{- end }}
{{- end -}}

{{/* The bootstrap document the ConfigMap carries. */}}
{{- define "courier.bootstrap" -}}
{{- if .Values.bootstrap.custom -}}
{{- .Values.bootstrap.custom -}}
{{- else -}}
{{- $b := include "courier.bootstrap.rendered" . | fromYaml -}}
{{- if hasKey $b "Error" -}}
{{- fail (printf "internal error rendering the bootstrap: %s" (get $b "Error")) -}}
{{- end -}}
{{- $b = mustMergeOverwrite $b (deepCopy .Values.bootstrap.overrides) -}}
{{- toYaml $b -}}
{{- end -}}
{{- end -}}
