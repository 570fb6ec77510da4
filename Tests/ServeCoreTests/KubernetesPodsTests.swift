import Foundation
import Testing

@testable import ServeCore

/// The kubernetes node provider's pure part: its config, the pods it makes, how it reads a pod
/// list, and the kubeconfig reader. The driver against a stand-in API server is in
/// `IntegrationTests/KubernetesProviderTests.swift`.
@Suite("Kubernetes provider: config, pods, kubeconfig")
struct KubernetesPodsTests {
    static let template = """
        provider:
          type: kubernetes
          namespace: serve
          cluster_name: prod
          head_address: serve-head.serve.svc:6380
          pod_template:
            metadata: {labels: {team: ml}, annotations: {note: kept}}
            spec:
              containers:
                - {name: sidecar, image: busybox}
                - name: serve-worker
                  image: swift-serve:1
                  args: [--http-port=8000]
                  resources: {requests: {cpu: 1500m}}
        node_types:
          gpu: {resources: {CPU: 8, GPU: 2, memory: 1000000}, max_workers: 2}
        """

    func problems(_ text: String) -> [String] {
        ClusterConfigTests().problems(text)
    }

    @Test("the kubernetes provider's config parses with its defaults")
    func config() throws {
        let config = try ClusterConfigParser.parse(Self.template)
        guard case .kubernetes(let kubernetes) = config.provider else {
            Issue.record("not the kubernetes provider: \(config.provider)")
            return
        }
        #expect(config.provider.kind == "kubernetes")
        #expect(kubernetes.namespace == "serve")
        #expect(kubernetes.clusterName == "prod")
        #expect(kubernetes.headAddress == "serve-head.serve.svc:6380")
        #expect(kubernetes.tokenSecret == "serve-token")
        #expect(kubernetes.timeoutS == 30)
        #expect(kubernetes.kubeconfig == nil && kubernetes.apiServer == nil)
        #expect(kubernetes.podTemplate["spec"]?["containers"]?.arrayValue?.count == 2)
    }

    @Test("mistakes in the kubernetes provider are refused with their field paths")
    func refused() {
        let problems = self.problems(
            """
            provider:
              type: kubernetes
              namespace: Not_A_Namespace
              cluster_name: "-bad"
              api_server: serve-head:443
              pod_template: {spec: {containers: [{name: w}]}, status: {}}
              replicas: 2
            node_types:
              c: {resources: {CPU: 1}, max_workers: 1}
            """)
        #expect(problems.contains { $0.hasPrefix("provider.namespace: must be a Kubernetes namespace name") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("provider.cluster_name: must be a Kubernetes label value") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("provider.api_server: must be a URL") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("provider.head_address: required field is missing") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("provider.pod_template.status: a pod template has metadata and spec only") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("provider.pod_template.spec.containers[0]: a container needs a name and an image") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("provider.replicas") }, "\(problems)")
        #expect(self.problems("provider: {type: kubernetes, head_address: h:1}\nnode_types: {c: {resources: {CPU: 1}, max_workers: 1}}\n")
            .contains { $0.hasPrefix("provider.pod_template: required field is missing") })
    }

    @Test("a node's pod: the template, this head's labels, the node's annotations, the worker's arguments and resources")
    func pod() throws {
        let config = try ClusterConfigParser.parse(Self.template)
        guard case .kubernetes(let kubernetes) = config.provider else { throw KubernetesAPIError("not kubernetes") }
        let type = try #require(config.nodeType(named: "gpu"))
        let context = ["--address", kubernetes.headAddress, "--node-id", "gpu-4f1a-1"] + type.workerFlags
        let pod = KubernetesPods.pod(
            template: kubernetes.podTemplate, clusterName: "prod", nodeID: "gpu-4f1a-1", nodeType: type, workerArguments: context,
            tokenSecret: kubernetes.tokenSecret, requestID: "req-1")
        #expect(pod["kind"] == "Pod" && pod["apiVersion"] == "v1")
        #expect(pod["metadata"]?["name"] == "prod-gpu-4f1a-1")
        #expect(pod["metadata"]?["labels"] == [
            "team": "ml", "app.kubernetes.io/managed-by": "swift-serve", "swift-serve.io/cluster": "prod", "swift-serve.io/node-type": "gpu",
        ])
        #expect(pod["metadata"]?["annotations"] == [
            "note": "kept", "swift-serve.io/node-id": "gpu-4f1a-1", "swift-serve.io/node-type": "gpu", "swift-serve.io/request-id": "req-1",
        ])
        #expect(pod["spec"]?["restartPolicy"] == "Never")
        let containers = try #require(pod["spec"]?["containers"]?.arrayValue)
        #expect(containers[0] == ["name": "sidecar", "image": "busybox"], "only the serve-worker container is changed")
        let worker = containers[1]
        #expect(worker["args"]?.arrayValue?.compactMap(\.stringValue) == ["--http-port=8000"] + context)
        #expect(context.starts(with: ["--address", "serve-head.serve.svc:6380", "--node-id", "gpu-4f1a-1", "--node-type", "gpu", "--num-cpus", "8", "--num-gpus", "2"]))
        #expect(worker["env"] == [["name": "SERVE_TOKEN", "valueFrom": ["secretKeyRef": ["name": "serve-token", "key": "token"]]]])
        // The template's CPU request is kept; memory and GPUs come from the node type.
        #expect(worker["resources"] == [
            "requests": ["cpu": "1500m", "memory": "1000000"], "limits": ["memory": "1000000", "nvidia.com/gpu": "2"],
        ])
    }

    @Test("pod names: DNS labels, stable per node id, distinct for ids that clean up alike")
    func names() {
        #expect(KubernetesPods.podName(clusterName: "prod", nodeID: "cpu2-4f1a-1") == "prod-cpu2-4f1a-1")
        let upper = KubernetesPods.podName(clusterName: "prod", nodeID: "GPU_big-4f1a-1")
        let lower = KubernetesPods.podName(clusterName: "prod", nodeID: "gpu-big-4f1a-1")
        #expect(upper != lower)
        #expect(upper == KubernetesPods.podName(clusterName: "prod", nodeID: "GPU_big-4f1a-1"))
        let long = KubernetesPods.podName(clusterName: "prod", nodeID: String(repeating: "x", count: 100) + "-1")
        for name in [upper, lower, long] {
            #expect(name.count <= 63 && KubernetesPods.isDNSLabel(name), "\(name)")
        }
        #expect(KubernetesPods.labelValue("a:b/c") == "a_b_c")
        #expect(KubernetesPods.labelSelector(clusterName: "prod") == "app.kubernetes.io/managed-by=swift-serve,swift-serve.io/cluster=prod")
    }

    @Test("a pod list: only this cluster's pods with a node id; finished and deleted pods are terminated")
    func list() throws {
        func item(_ name: String, cluster: String, node: String?, phase: String, deleting: Bool = false) -> JSONValue {
            var metadata: [String: JSONValue] = [
                "name": .string(name), "labels": ["app.kubernetes.io/managed-by": "swift-serve", "swift-serve.io/cluster": .string(cluster)],
            ]
            if let node { metadata["annotations"] = ["swift-serve.io/node-id": .string(node), "swift-serve.io/node-type": "cpu2"] }
            if deleting { metadata["deletionTimestamp"] = "2026-12-03T10:00:00Z" }
            return ["metadata": .object(metadata), "status": ["phase": .string(phase)]]
        }
        let list: JSONValue = ["kind": "PodList", "items": [
            item("a", cluster: "prod", node: "cpu2-1", phase: "Running"),
            item("b", cluster: "prod", node: "cpu2-2", phase: "Pending"),
            item("c", cluster: "prod", node: "cpu2-3", phase: "Failed"),
            item("d", cluster: "prod", node: "cpu2-4", phase: "Running", deleting: true),
            item("e", cluster: "staging", node: "cpu2-5", phase: "Running"),
            item("f", cluster: "prod", node: nil, phase: "Running"),
        ]]
        let pods = try KubernetesPods.pods(inList: list, clusterName: "prod")
        #expect(pods.map(\.nodeID) == ["cpu2-1", "cpu2-2", "cpu2-3", "cpu2-4"])
        #expect(pods.filter { !$0.isTerminated }.map(\.state) == ["running", "pending"])
        #expect(pods.filter(\.needsDeleting).map(\.podName) == ["c"])
        #expect(throws: KubernetesAPIError.self) { try KubernetesPods.pods(inList: ["kind": "Status"], clusterName: "prod") }
    }

    @Test("an API failure names the call, the status and the server's message")
    func failure() {
        let error = KubernetesPods.failure(
            status: 403, body: #"{"kind":"Status","message":"pods is forbidden: User cannot create"}"#, doing: "creating pod p")
        #expect(error.description.hasPrefix("creating pod p: HTTP 403 (the service account may not do this"))
        #expect(error.description.hasSuffix("pods is forbidden: User cannot create"))
    }

    @Test("kubeconfig: the current context's server, token, CA data, namespace; relative paths; plugins refused")
    func kubeconfig() throws {
        let text = """
            apiVersion: v1
            kind: Config
            current-context: dev
            contexts:
              - {name: dev, context: {cluster: c1, user: u1, namespace: serve}}
              - {name: other, context: {cluster: c2, user: u2}}
            clusters:
              - {name: c1, cluster: {server: "https://10.0.0.1:6443", certificate-authority-data: "aGVsbG8="}}
              - {name: c2, cluster: {server: "https://10.0.0.2:6443", certificate-authority: ca.pem, insecure-skip-tls-verify: true}}
            users:
              - {name: u1, user: {token: abc}}
              - {name: u2, user: {client-certificate: certs/c.pem, client-key: /abs/k.pem}}
              - {name: u3, user: {exec: {command: aws}}}
            """
        let dev = try KubeConfig.parse(text, directory: "/home/me/.kube")
        #expect(dev == KubernetesAccess(server: "https://10.0.0.1:6443", namespace: "serve", token: "abc", certificateAuthority: .data(Array("hello".utf8))))
        let other = try KubeConfig.parse(text, context: "other", directory: "/home/me/.kube")
        #expect(other.certificateAuthority == .file("/home/me/.kube/ca.pem"))
        #expect(other.clientCertificate == .file("/home/me/.kube/certs/c.pem"))
        #expect(other.clientKey == .file("/abs/k.pem"))
        #expect(other.insecureSkipTLSVerify && other.namespace == nil)
        let plugin = text.replacingOccurrences(of: "user: u2}", with: "user: u3}")
        #expect(throws: KubernetesAPIError.self) { try KubeConfig.parse(plugin, context: "other", directory: "/") }
        #expect(throws: KubernetesAPIError.self) { try KubeConfig.parse(text, context: "missing", directory: "/") }

        let inCluster = KubernetesAccess.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"], namespace: "serve\n")
        #expect(inCluster == KubernetesAccess(
            server: "https://10.96.0.1:443", namespace: "serve", tokenFile: "/var/run/secrets/kubernetes.io/serviceaccount/token",
            certificateAuthority: .file("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")))
        #expect(KubernetesAccess.inCluster(environment: [:], namespace: nil) == nil)
    }
}
