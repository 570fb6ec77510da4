import Foundation
import ServeCore
import ServeEmbedded
import ServeHead
import Testing

/// A stand-in for the Kubernetes API server's pods endpoints, written for these tests (not
/// Kubernetes): `POST`, `GET` (with `labelSelector`: `k=v`, `k!=v`, `k`) and `DELETE` of
/// `/api/v1/namespaces/NS/pods[/NAME]`, answering as the API server does (201, 409
/// AlreadyExists, 404 NotFound, 401 with `Status` objects), over HTTPS with the certificate it
/// is given. `/stand-in/...` is its own: the requests it saw, a pod's phase set (what a kubelet
/// would report), the pods it holds.
final class KubernetesStandIn: @unchecked Sendable {
    static let server = #"""
        import json, re, ssl, sys, threading, uuid
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit, parse_qs

        token, cert, key, seed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
        pods = {}   # (namespace, name) -> pod
        log = []    # [method, path, body or None]
        lock = threading.Lock()
        for pod in json.load(open(seed)):
            pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod

        def status(code, reason, message):
            return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}

        def matches(pod, selector):
            labels = pod["metadata"].get("labels", {})
            for term in filter(None, selector.split(",")):
                if "!=" in term:
                    k, v = term.split("!=", 1)
                    if labels.get(k) == v: return False
                elif "=" in term:
                    k, v = term.split("=", 1)
                    if labels.get(k.rstrip("=")) != v.lstrip("="): return False
                elif term not in labels:
                    return False
            return True

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args): pass

            def answer(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self, method):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if url.path.startswith("/stand-in/"):
                    return self.answer(*self.stand_in(method, url.path, body))
                with lock:
                    log.append([method, self.path, json.loads(body) if body else None])
                if self.headers.get("Authorization") != "Bearer " + token:
                    return self.answer(*status(401, "Unauthorized", "Unauthorized"))
                m = re.fullmatch(r"/api/v1/namespaces/([a-z0-9-]+)/pods(?:/([a-z0-9.-]+))?", url.path)
                if not m:
                    return self.answer(*status(404, "NotFound", "the server could not find the requested resource"))
                namespace, name = m.group(1), m.group(2)
                with lock:
                    if method == "POST" and name is None:
                        pod = json.loads(body)
                        if pod.get("kind") != "Pod" or not pod.get("metadata", {}).get("name"):
                            return self.answer(*status(422, "Invalid", "Pod is invalid: metadata.name: Required value"))
                        name = pod["metadata"]["name"]
                        if (namespace, name) in pods:
                            return self.answer(*status(409, "AlreadyExists", 'pods "%s" already exists' % name))
                        pod["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp="2026-12-03T00:00:00Z")
                        pod["status"] = {"phase": "Pending"}
                        pods[(namespace, name)] = pod
                        return self.answer(201, pod)
                    if method == "GET" and name is None:
                        selector = parse_qs(url.query).get("labelSelector", [""])[0]
                        items = [p for (ns, _), p in sorted(pods.items()) if ns == namespace and matches(p, selector)]
                        return self.answer(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
                    if method == "DELETE" and name is not None:
                        pod = pods.pop((namespace, name), None)
                        if pod is None:
                            return self.answer(*status(404, "NotFound", 'pods "%s" not found' % name))
                        return self.answer(200, pod)
                return self.answer(*status(405, "MethodNotAllowed", "the server does not allow this method"))

            def stand_in(self, method, path, body):
                with lock:
                    if path == "/stand-in/log":
                        return 200, log
                    if path == "/stand-in/pods":
                        return 200, [p for _, p in sorted(pods.items())]
                    if path == "/stand-in/phase" and method == "POST":
                        change = json.loads(body)
                        pods[(change["namespace"], change["name"])]["status"]["phase"] = change["phase"]
                        return 200, {}
                return 404, {}

            def do_GET(self): self.handle_any("GET")
            def do_POST(self): self.handle_any("POST")
            def do_DELETE(self): self.handle_any("DELETE")

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        print("listening %d" % server.server_address[1], flush=True)
        server.serve_forever()
        """#

    let directory: URL
    let process = Process()
    let output: URL
    private(set) var port = 0
    let token: String

    /// A CA made for this run, and the stand-in's certificate for 127.0.0.1 signed by it.
    var caPath: String { self.directory.appendingPathComponent("ca.crt").path }

    init(token: String, seed: [JSONValue] = []) async throws {
        self.token = token
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("k8s-stand-in-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
        try Self.makeCertificates(in: self.directory)
        let script = self.directory.appendingPathComponent("stand_in.py")
        try Self.server.write(to: script, atomically: true, encoding: .utf8)
        let seedFile = self.directory.appendingPathComponent("seed.json")
        try JSONValue.array(seed).jsonString().write(to: seedFile, atomically: true, encoding: .utf8)
        self.output = self.directory.appendingPathComponent("stand-in.log")
        _ = FileManager.default.createFile(atPath: self.output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: self.output)
        self.process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        self.process.arguments = [
            "python3", script.path, token, self.directory.appendingPathComponent("server.crt").path,
            self.directory.appendingPathComponent("server.key").path, seedFile.path,
        ]
        self.process.standardOutput = handle
        self.process.standardError = handle
        try self.process.run()
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let text = (try? String(contentsOf: self.output, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("listening ") }), let port = Int(line.dropFirst(10)) {
                self.port = port
                return
            }
            guard self.process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        self.stop()
        throw HarnessFailure("the stand-in API server did not start: \((try? String(contentsOf: self.output, encoding: .utf8)) ?? "")")
    }

    static func makeCertificates(in directory: URL) throws {
        let d = directory.path
        try "subjectAltName=IP:127.0.0.1\n".write(toFile: "\(d)/san.ext", atomically: true, encoding: .utf8)
        for argv in [
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(d)/ca.key", "-out", "\(d)/ca.crt", "-days", "1", "-subj", "/CN=stand-in test CA"],
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(d)/server.key", "-out", "\(d)/server.csr", "-subj", "/CN=127.0.0.1"],
            ["openssl", "x509", "-req", "-in", "\(d)/server.csr", "-CA", "\(d)/ca.crt", "-CAkey", "\(d)/ca.key", "-CAcreateserial",
             "-out", "\(d)/server.crt", "-days", "1", "-extfile", "\(d)/san.ext"],
            // A second CA that signed nothing here: a client trusting it must refuse the server.
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(d)/other-ca.key", "-out", "\(d)/other-ca.crt", "-days", "1", "-subj", "/CN=another CA"],
        ] {
            let (status, output) = try NetnsLab.run(["/usr/bin/env"] + argv)
            guard status == 0 else { throw HarnessFailure("\(argv.joined(separator: " ")): \(output)") }
        }
    }

    var server: String { "https://127.0.0.1:\(self.port)" }

    /// One of the stand-in's own endpoints, read with curl (trusting its CA).
    func standIn(_ path: String, post body: JSONValue? = nil) async throws -> JSONValue {
        var argv = ["curl", "--silent", "--show-error", "--fail", "--cacert", self.caPath]
        if let body { argv += ["--data-binary", body.jsonString()] }
        let (status, output) = try await DeployFiles.run(argv + ["\(self.server)\(path)"])
        guard status == 0 else { throw HarnessFailure("stand-in \(path): \(output)") }
        return try JSONValue.parse(output)
    }

    /// The API requests it answered: (method, path), and the pod bodies it was sent.
    func requests() async throws -> [(method: String, path: String, body: JSONValue)] {
        try await self.standIn("/stand-in/log").arrayValue?.compactMap { entry in
            guard let fields = entry.arrayValue, fields.count == 3 else { return nil }
            return (fields[0].stringValue ?? "", fields[1].stringValue ?? "", fields[2])
        } ?? []
    }

    func pods() async throws -> [JSONValue] {
        try await self.standIn("/stand-in/pods").arrayValue ?? []
    }

    func setPhase(namespace: String, name: String, _ phase: String) async throws {
        _ = try await self.standIn("/stand-in/phase", post: ["namespace": .string(namespace), "name": .string(name), "phase": .string(phase)])
    }

    /// A kubeconfig for this server: the token, and the CA inline (`certificate-authority-data`).
    func kubeconfig(token: String, ca: String? = nil, namespace: String = "serve") throws -> String {
        let caData = try Data(contentsOf: URL(fileURLWithPath: ca ?? self.caPath)).base64EncodedString()
        let path = self.directory.appendingPathComponent("kubeconfig-\(UUID().uuidString)").path
        try """
            apiVersion: v1
            kind: Config
            current-context: test
            contexts: [{name: test, context: {cluster: stand-in, user: head, namespace: \(namespace)}}]
            clusters: [{name: stand-in, cluster: {server: "\(self.server)", certificate-authority-data: \(caData)}}]
            users: [{name: head, user: {token: \(token)}}]
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    var log: String { (try? String(contentsOf: self.output, encoding: .utf8)) ?? "" }

    func stop() {
        // SIGKILL: the test process's threads block SIGTERM, and a child inherits that mask.
        if self.process.isRunning {
            kill(self.process.processIdentifier, SIGKILL)
            self.process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: self.directory)
    }
}

@Suite("Kubernetes node provider (against a stand-in API server)", .serialized)
struct KubernetesProviderTests {
    static let template: JSONValue = [
        "metadata": ["labels": ["app.kubernetes.io/name": "swift-serve"]],
        "spec": ["containers": [["name": "serve-worker", "image": "swift-serve:test", "command": ["/usr/local/bin/serve-worker"]]]],
    ]
    static let cpu2 = NodeTypeConfig(name: "cpu2", resources: ["CPU": 2], maxWorkers: 5)

    /// Another head's pod and a pod of someone else's, in the same namespace: `list` must not
    /// report them, nor `terminate` touch them.
    static let foreignPods: [JSONValue] = [
        ["kind": "Pod", "metadata": [
            "name": "staging-cpu2-1", "namespace": "serve",
            "labels": ["app.kubernetes.io/managed-by": "swift-serve", "swift-serve.io/cluster": "staging"],
            "annotations": ["swift-serve.io/node-id": "cpu2-1", "swift-serve.io/node-type": "cpu2"],
        ], "status": ["phase": "Running"]],
        ["kind": "Pod", "metadata": ["name": "postgres-0", "namespace": "serve", "labels": ["app": "postgres"]], "status": ["phase": "Running"]],
    ]

    func provider(_ config: KubernetesProviderConfig, environment: [String: String] = [:], serviceAccount: String = "/nonexistent") -> KubernetesNodeProvider {
        let context = NodeProviderContext(clusterAddress: "127.0.0.1:6380", token: "cluster-token", stateDirectory: FileManager.default.temporaryDirectory)
        return KubernetesNodeProvider(config: config, context: context, environment: environment, serviceAccountDirectory: serviceAccount)
    }

    func withStandIn(token: String = "api-token", _ body: (KubernetesStandIn) async throws -> Void) async throws {
        let standIn = try await KubernetesStandIn(token: token, seed: Self.foreignPods)
        do {
            try await body(standIn)
        } catch {
            print(standIn.log)
            standIn.stop()
            throw error
        }
        standIn.stop()
    }

    @Test("launch makes one pod per node from the template, list finds exactly its own, terminate deletes them; idempotent (HTTPS, custom CA, kubeconfig)")
    func lifecycle() async throws {
        try await self.withStandIn { standIn in
            let config = KubernetesProviderConfig(
                clusterName: "prod", headAddress: "serve-head.serve.svc:6380", kubeconfig: try standIn.kubeconfig(token: "api-token"),
                podTemplate: Self.template)
            let provider = self.provider(config)
            #expect(try await provider.namespace() == "serve")
            let request = NodeLaunchRequest(requestID: "req-1", nodeType: Self.cpu2, nodeIDs: ["cpu2-ab12-1", "cpu2-ab12-2"])
            let launched = try await provider.launch(request)
            #expect(launched.map(\.nodeID) == ["cpu2-ab12-1", "cpu2-ab12-2"])
            // The same request again: answered from memory, nothing sent.
            #expect(try await provider.launch(request) == launched)
            // A new request for the same node ids (a head that lost its answer): 409, no new pod.
            #expect(try await provider.launch(NodeLaunchRequest(requestID: "req-2", nodeType: Self.cpu2, nodeIDs: request.nodeIDs)).count == 2)
            let posts = try await standIn.requests().filter { $0.method == "POST" }
            #expect(posts.count == 4)
            #expect(try await standIn.pods().count == 4, "two of ours beside the two foreign pods")

            // What was created: the template's pod with the node's labels and arguments.
            let pod = try #require(posts.first?.body)
            #expect(pod["metadata"]?["name"] == "prod-cpu2-ab12-1")
            #expect(pod["metadata"]?["labels"]?["swift-serve.io/cluster"] == "prod")
            let container = try #require(pod["spec"]?["containers"]?.arrayValue?.first)
            #expect(container["args"]?.arrayValue?.compactMap(\.stringValue) == [
                "--address", "serve-head.serve.svc:6380", "--node-id", "cpu2-ab12-1", "--node-type", "cpu2", "--num-cpus", "2", "--num-gpus", "0",
            ])
            #expect(container["resources"]?["requests"]?["cpu"] == "2")
            #expect(!pod.jsonString().contains("cluster-token"), "the cluster token is never written into a pod")
            // And it is a valid Pod for the pinned Kubernetes version.
            let file = standIn.directory.appendingPathComponent("pod.json")
            try pod.jsonString().write(to: file, atomically: true, encoding: .utf8)
            let (valid, output) = try await DeployFiles.validate([file.path])
            #expect(valid == 0, "\(output)")

            // list: exactly this head's pods, with the kubelet's phase.
            try await standIn.setPhase(namespace: "serve", name: "prod-cpu2-ab12-1", "Running")
            var nodes = try await provider.nonTerminatedNodes()
            #expect(nodes.map(\.nodeID) == ["cpu2-ab12-1", "cpu2-ab12-2"])
            #expect(nodes.map(\.nodeType) == ["cpu2", "cpu2"])
            #expect(nodes.map(\.state) == ["running", "pending"])
            let list = try #require(try await standIn.requests().last { $0.method == "GET" })
            #expect(list.path == "/api/v1/namespaces/serve/pods?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dswift-serve%2Cswift-serve.io%2Fcluster%3Dprod")

            // A worker that exited (restartPolicy Never → Failed) is not listed, and its pod is deleted.
            try await standIn.setPhase(namespace: "serve", name: "prod-cpu2-ab12-2", "Failed")
            nodes = try await provider.nonTerminatedNodes()
            #expect(nodes.map(\.nodeID) == ["cpu2-ab12-1"])
            #expect(try await standIn.pods().compactMap { $0["metadata"]?["name"]?.stringValue }.sorted() == ["postgres-0", "prod-cpu2-ab12-1", "staging-cpu2-1"])

            // terminate: its pod goes; an id it never launched is not an error; others' pods stay.
            try await provider.terminate(nodeIDs: ["cpu2-ab12-1", "cpu2-ab12-9"], requestID: "term-1")
            #expect(try await provider.nonTerminatedNodes().isEmpty)
            #expect(try await standIn.pods().compactMap { $0["metadata"]?["name"]?.stringValue }.sorted() == ["postgres-0", "staging-cpu2-1"])
        }
    }

    @Test("in a pod: the service account's token, CA and namespace")
    func inCluster() async throws {
        try await self.withStandIn(token: "sa-token") { standIn in
            let account = standIn.directory.appendingPathComponent("serviceaccount")
            try FileManager.default.createDirectory(at: account, withIntermediateDirectories: true)
            try "sa-token\n".write(to: account.appendingPathComponent("token"), atomically: true, encoding: .utf8)
            try "serve".write(to: account.appendingPathComponent("namespace"), atomically: true, encoding: .utf8)
            try FileManager.default.copyItem(atPath: standIn.caPath, toPath: account.appendingPathComponent("ca.crt").path)
            let provider = self.provider(
                KubernetesProviderConfig(headAddress: "h:6380", podTemplate: Self.template),
                environment: ["KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": String(standIn.port), "PATH": "/usr/bin:/bin"],
                serviceAccount: account.path)
            _ = try await provider.launch(NodeLaunchRequest(requestID: "r", nodeType: Self.cpu2, nodeIDs: ["cpu2-1"]))
            // Default cluster name "default": another head's "staging" pod with the same node id is not ours.
            let nodes = try await provider.nonTerminatedNodes()
            #expect(nodes == [ProviderNode(nodeID: "cpu2-1", nodeType: "cpu2", state: "pending")])
            #expect(try await standIn.pods().contains { $0["metadata"]?["name"] == "default-cpu2-1" })
        }
    }

    @Test("a refused token, an untrusted server and an unreachable one fail with what happened")
    func failures() async throws {
        try await self.withStandIn { standIn in
            let wrongToken = self.provider(KubernetesProviderConfig(
                headAddress: "h:6380", kubeconfig: try standIn.kubeconfig(token: "not-the-token"), podTemplate: Self.template))
            await #expect {
                try await wrongToken.launch(NodeLaunchRequest(requestID: "r", nodeType: Self.cpu2, nodeIDs: ["cpu2-1"]))
            } throws: { error in
                "\(error)".contains("creating pod default-cpu2-1: HTTP 401 (the API server refused the credentials")
            }
            let untrusted = self.provider(KubernetesProviderConfig(
                headAddress: "h:6380",
                kubeconfig: try standIn.kubeconfig(token: "api-token", ca: standIn.directory.appendingPathComponent("other-ca.crt").path),
                podTemplate: Self.template))
            await #expect {
                try await untrusted.nonTerminatedNodes()
            } throws: { error in
                "\(error)".contains("SSL certificate problem") || "\(error)".contains("certificate")
            }
            #expect(try await standIn.pods().count == 2, "nothing was created")
        }
        let nowhere = self.provider(KubernetesProviderConfig(headAddress: "h:6380", apiServer: "http://127.0.0.1:1", podTemplate: Self.template))
        await #expect {
            try await nowhere.nonTerminatedNodes()
        } throws: { error in
            "\(error)".contains("curl: (7)")
        }
        let noServer = self.provider(KubernetesProviderConfig(headAddress: "h:6380", podTemplate: Self.template))
        await #expect {
            try await noServer.nonTerminatedNodes()
        } throws: { error in
            "\(error)".contains("found no API server")
        }
    }

    /// A real `serve-head --cluster-config` with the kubernetes provider, against the stand-in.
    /// The test plays the kubelet (nothing here runs pods): for each pod of this head it starts
    /// `serve-worker` with the pod's arguments, `SERVE_TOKEN` as the Secret would give it, and
    /// the head's Service name resolved to the test head's address; when a pod is deleted, it
    /// sends its worker SIGTERM.
    @Test("a head launches a pod for pending replicas, the replicas run on the worker started from it, and an idle node's pod is deleted")
    func headEndToEnd() async throws {
        try await self.withStandIn { standIn in
            let kubeconfig = try standIn.kubeconfig(token: "api-token")
            let config = """
                provider:
                  type: kubernetes
                  kubeconfig: \(kubeconfig)
                  cluster_name: e2e
                  head_address: serve-head.serve.svc:6380
                  pod_template:
                    spec:
                      containers:
                        - name: serve-worker
                          image: swift-serve:test
                          args: [--listen-host=127.0.0.1, --http-host=127.0.0.1, --http-port=0]
                idle_timeout_s: 1
                node_types:
                  cpu2: {resources: {CPU: 2}, max_workers: 2}
                """
            let autoscaler = NodeAutoscalerTests()
            try await autoscaler.withAutoscaledCluster(config) { cluster in
                let kubelet = Kubelet(standIn: standIn, clusterAddress: "127.0.0.1:\(cluster.clusterPort)", token: cluster.token)
                let running = Task { try await kubelet.run() }
                defer { running.cancel() }
                do {
                    try await cluster.deploy("""
                        applications:
                          - name: app
                            route_prefix: /app
                            deployments:
                              - {name: D, handler: echo, num_replicas: 2, ray_actor_options: {num_cpus: 1}}
                        """)
                    _ = try await cluster.waitForRunning(app: "app", deployment: "D", replicas: 2, timeout: .seconds(90))
                    let pods = try await standIn.pods().filter { $0["metadata"]?["labels"]?["swift-serve.io/cluster"] == "e2e" }
                    #expect(pods.count == 1, "two 1-CPU replicas fit one 2-CPU node")
                    let (code, body, _) = try await cluster.get("/app/ping")
                    #expect(code == 200 && body == "/ping")
                    let nodes = try await autoscaler.nodes(cluster)
                    #expect(nodes["node_autoscaler"]?["provider"]?.stringValue == "kubernetes")

                    let (deleted, _) = try await cluster.adminCall(.delete, "/api/serve/applications/app")
                    #expect(deleted == 200)
                    try await autoscaler.waitFor("the idle node's pod to be deleted", timeout: .seconds(30)) {
                        let left = try await standIn.pods().filter { $0["metadata"]?["labels"]?["swift-serve.io/cluster"] == "e2e" }
                        return (left.isEmpty, left.count)
                    }
                    let deletes = try await standIn.requests().filter { $0.method == "DELETE" }
                    #expect(deletes.map(\.path) == pods.compactMap { $0["metadata"]?["name"]?.stringValue }.map { "/api/v1/namespaces/serve/pods/\($0)" })
                    try await autoscaler.waitFor("the worker to exit after its pod was deleted", timeout: .seconds(30)) {
                        let exited = await kubelet.allExited()
                        return (exited, exited)
                    }
                } catch {
                    print(await kubelet.logs())
                    await kubelet.stop()
                    throw error
                }
                await kubelet.stop()
            }
        }
    }
}

/// The test's stand-in for a kubelet and the cluster's DNS (see `headEndToEnd`).
actor Kubelet {
    let standIn: KubernetesStandIn
    let clusterAddress: String
    let token: String
    private var workers: [String: Child] = [:]

    init(standIn: KubernetesStandIn, clusterAddress: String, token: String) {
        self.standIn = standIn
        self.clusterAddress = clusterAddress
        self.token = token
    }

    func run() async throws {
        while !Task.isCancelled {
            let pods = try await self.standIn.pods().filter { $0["metadata"]?["labels"]?["swift-serve.io/cluster"] == "e2e" }
            let names = Set(pods.compactMap { $0["metadata"]?["name"]?.stringValue })
            for pod in pods {
                guard let name = pod["metadata"]?["name"]?.stringValue, self.workers[name] == nil,
                      let args = pod["spec"]?["containers"]?.arrayValue?.first?["args"]?.arrayValue?.compactMap(\.stringValue)
                else { continue }
                // The Service name resolves to the head (DNS); the Secret gives the token.
                let resolved = args.map { $0 == "serve-head.serve.svc:6380" ? self.clusterAddress : $0 }
                self.workers[name] = try Child("serve-worker", resolved, environment: ["SERVE_TOKEN": self.token])
                try await self.standIn.setPhase(namespace: "serve", name: name, "Running")
            }
            for (name, worker) in self.workers where !names.contains(name) && worker.process.isRunning {
                worker.signal(SIGTERM)
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    func allExited() -> Bool {
        !self.workers.isEmpty && self.workers.values.allSatisfy { !$0.process.isRunning }
    }

    func logs() -> String {
        self.workers.map { "--- pod \($0.key) ---\n\($0.value.output)" }.joined(separator: "\n")
    }

    func stop() {
        for worker in self.workers.values where worker.process.isRunning { worker.signal(SIGKILL) }
    }
}
