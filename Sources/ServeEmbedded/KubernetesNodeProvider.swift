import Foundation
import ServeCore
import ServeHead

/// `provider: {type: kubernetes, …}`: each node is a worker pod, created, listed and deleted
/// through the API server's REST API (`/api/v1/namespaces/NS/pods`). The pods come from the
/// config's `pod_template` (`KubernetesPods.pod`: this head's labels, the node's annotations,
/// the worker's arguments, resources matching the node type); `list` selects this head's label
/// `swift-serve.io/cluster`, so it finds exactly its own pods.
///
/// Idempotent per request id, like the other providers (answers are kept by request id), and
/// per node id beside that: a pod's name comes from its node id, so creating it again answers
/// 409 AlreadyExists, which counts as launched.
///
/// HTTPS goes through curl, run as a child process for each call: the project has no TLS stack
/// of its own (its wire layer is cleartext HTTP/2 over nghttp2), curl is already one of its
/// Debian packages, and it verifies the API server against a custom CA (`--cacert`) and presents
/// a client certificate. The token travels in a header file (mode 0600, removed after the
/// call), never in arguments, which `ps` shows.
///
/// Credentials: `provider.kubeconfig` (a minimal reader, `KubeConfig`), else the pod's service
/// account (`KUBERNETES_SERVICE_HOST`, `/var/run/secrets/kubernetes.io/serviceaccount`), else
/// `provider.api_server` alone (`kubectl proxy`).
public actor KubernetesNodeProvider: NodeProvider {
    public nonisolated let kind = "kubernetes"

    private let config: KubernetesProviderConfig
    private let context: NodeProviderContext
    private let environment: [String: String]
    private let serviceAccountDirectory: String
    private let scratch: URL
    private var launched = LaunchAnswers()
    private var connection: (access: KubernetesAccess, namespace: String)?

    public init(
        config: KubernetesProviderConfig,
        context: NodeProviderContext,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        serviceAccountDirectory: String = KubernetesAccess.serviceAccountDirectory
    ) {
        self.config = config
        var context = context
        context.clusterAddress = config.headAddress
        self.context = context
        self.environment = environment
        self.serviceAccountDirectory = serviceAccountDirectory
        self.scratch = FileManager.default.temporaryDirectory.appendingPathComponent("serve-kubernetes-provider-\(UUID().uuidString)")
    }

    /// The namespace the pods go to (once the credentials are read).
    public func namespace() throws -> String {
        try self.connect().namespace
    }

    public func launch(_ request: NodeLaunchRequest) async throws -> [ProviderNode] {
        if let answer = self.launched[request.requestID] { return answer }
        var created: [String] = []
        var answer: [ProviderNode] = []
        for nodeID in request.nodeIDs {
            let pod = KubernetesPods.pod(
                template: self.config.podTemplate, clusterName: self.config.clusterName, nodeID: nodeID, nodeType: request.nodeType,
                workerArguments: self.context.workerArguments(nodeID: nodeID, type: request.nodeType),
                tokenSecret: self.config.tokenSecret, requestID: request.requestID)
            let name = KubernetesPods.podName(clusterName: self.config.clusterName, nodeID: nodeID)
            let status: Int
            let body: String
            do {
                (status, body) = try await self.call("POST", try self.podsPath(), body: pod)
            } catch {
                await self.deleteQuietly(created)
                throw error
            }
            switch status {
            case 200, 201, 202: created.append(name)
            case 409: break  // this node's pod exists already: a retried launch
            default:
                // Delete what this request created, so a retry starts from nothing.
                await self.deleteQuietly(created)
                throw NodeProviderError(KubernetesPods.failure(status: status, body: body, doing: "creating pod \(name)").description)
            }
            answer.append(ProviderNode(nodeID: nodeID, nodeType: request.nodeType.name, state: "pending"))
        }
        self.launched.remember(request.requestID, answer)
        return answer
    }

    public func terminate(nodeIDs: [String], requestID: String) async throws {
        for nodeID in nodeIDs {
            try await self.delete(KubernetesPods.podName(clusterName: self.config.clusterName, nodeID: nodeID))
        }
    }

    /// This head's pods that are not finished or being deleted. Pods whose worker has exited
    /// (`Succeeded`, `Failed`: `restartPolicy: Never`) are deleted on the way, so they do not
    /// linger after the autoscaler has replaced their node.
    public func nonTerminatedNodes() async throws -> [ProviderNode] {
        let selector = KubernetesPods.labelSelector(clusterName: self.config.clusterName)
        let (status, body) = try await self.call("GET", try self.podsPath() + "?labelSelector=" + Self.percentEncoded(selector), body: nil)
        guard status == 200 else {
            throw NodeProviderError(KubernetesPods.failure(status: status, body: body, doing: "listing pods").description)
        }
        let pods: [KubernetesPods.PodState]
        do {
            pods = try KubernetesPods.pods(inList: try JSONValue.parse(body), clusterName: self.config.clusterName)
        } catch {
            throw NodeProviderError("listing pods: \(error)")
        }
        await self.deleteQuietly(pods.filter(\.needsDeleting).map(\.podName))
        return pods.filter { !$0.isTerminated }.map { ProviderNode(nodeID: $0.nodeID, nodeType: $0.nodeType, state: $0.state) }
    }

    private func delete(_ name: String) async throws {
        let (status, body) = try await self.call("DELETE", try self.podsPath() + "/" + name, body: nil)
        guard [200, 202, 404].contains(status) else {
            throw NodeProviderError(KubernetesPods.failure(status: status, body: body, doing: "deleting pod \(name)").description)
        }
    }

    private func deleteQuietly(_ names: [String]) async {
        for name in names { try? await self.delete(name) }
    }

    private func podsPath() throws -> String {
        "/api/v1/namespaces/\(try self.connect().namespace)/pods"
    }

    /// Reads the credentials once: the kubeconfig, else the service account, else `api_server`
    /// alone. Inline certificates are written to files (mode 0600) for curl.
    private func connect() throws -> (access: KubernetesAccess, namespace: String) {
        if let connection = self.connection { return connection }
        var access: KubernetesAccess
        if let path = self.config.kubeconfig {
            let text: String
            do {
                text = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw NodeProviderError("cannot read the kubeconfig \(path): \(error.localizedDescription)")
            }
            do {
                access = try KubeConfig.parse(text, context: self.config.context, directory: (path as NSString).deletingLastPathComponent)
            } catch {
                throw NodeProviderError("\(path): \(error)")
            }
        } else if let inCluster = KubernetesAccess.inCluster(
            environment: self.environment,
            namespace: try? String(contentsOfFile: "\(self.serviceAccountDirectory)/namespace", encoding: .utf8),
            directory: self.serviceAccountDirectory)
        {
            access = inCluster
        } else if let server = self.config.apiServer {
            access = KubernetesAccess(server: server)
        } else {
            throw NodeProviderError(
                "the kubernetes provider found no API server: not in a pod (KUBERNETES_SERVICE_HOST is unset), and neither provider.kubeconfig nor provider.api_server is given")
        }
        if let server = self.config.apiServer { access.server = server }
        while access.server.hasSuffix("/") { access.server.removeLast() }
        try FileManager.default.createDirectory(at: self.scratch, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        access.certificateAuthority = try self.file(access.certificateAuthority, "ca.crt")
        access.clientCertificate = try self.file(access.clientCertificate, "client.crt")
        access.clientKey = try self.file(access.clientKey, "client.key")
        let connection = (access, self.config.namespace ?? access.namespace ?? "default")
        self.connection = connection
        return connection
    }

    private func file(_ material: KubernetesAccess.Material?, _ name: String) throws -> KubernetesAccess.Material? {
        guard case .data(let bytes) = material else { return material }
        let path = self.scratch.appendingPathComponent(name).path
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes), attributes: [.posixPermissions: 0o600]) else {
            throw NodeProviderError("cannot write \(path) for curl")
        }
        return .file(path)
    }

    /// One API call through curl: the HTTP status and the body. Throws when curl cannot reach
    /// the server (refused, TLS verification failed, past `timeout_s`), with curl's message.
    private func call(_ method: String, _ path: String, body: JSONValue?) async throws -> (Int, String) {
        let (access, _) = try self.connect()
        let call = UUID().uuidString
        let headers = self.scratch.appendingPathComponent("\(call).headers")
        let requestBody = self.scratch.appendingPathComponent("\(call).request")
        let responseBody = self.scratch.appendingPathComponent("\(call).response")
        defer {
            for file in [headers, requestBody, responseBody] { try? FileManager.default.removeItem(at: file) }
        }
        var lines = ["Accept: application/json"]
        if let token = try self.token(access) { lines.append("Authorization: Bearer \(token)") }
        var argv = [
            "curl", "--silent", "--show-error", "--max-time", String(self.config.timeoutS), "--request", method,
            "--output", responseBody.path, "--write-out", "%{http_code}",
        ]
        if let body {
            lines.append("Content-Type: application/json")
            guard FileManager.default.createFile(atPath: requestBody.path, contents: Data(body.jsonString().utf8), attributes: [.posixPermissions: 0o600]) else {
                throw NodeProviderError("cannot write \(requestBody.path) for curl")
            }
            argv += ["--data-binary", "@\(requestBody.path)"]
        }
        guard FileManager.default.createFile(atPath: headers.path, contents: Data((lines.joined(separator: "\n") + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw NodeProviderError("cannot write \(headers.path) for curl")
        }
        argv += ["--header", "@\(headers.path)"]
        if case .file(let ca) = access.certificateAuthority { argv += ["--cacert", ca] }
        if case .file(let certificate) = access.clientCertificate { argv += ["--cert", certificate] }
        if case .file(let key) = access.clientKey { argv += ["--key", key] }
        if access.insecureSkipTLSVerify { argv.append("--insecure") }
        argv.append(access.server + path)
        let output = try await ProviderCommand.run(
            "kubernetes API (curl \(method) \(path))", argv: argv, environment: ProcessInfo.processInfo.environment, timeout: self.config.timeoutS + 5,
            scratch: self.scratch)
        guard let status = Int(output.trimmingCharacters(in: .whitespacesAndNewlines)), status > 0 else {
            throw NodeProviderError("\(method) \(access.server)\(path): no HTTP answer (curl wrote \(output.prefix(100)))")
        }
        let answer = (try? String(contentsOf: responseBody, encoding: .utf8)) ?? ""
        return (status, answer)
    }

    /// The bearer token: the token file read again for every call (rotated tokens), else the
    /// kubeconfig's token.
    private func token(_ access: KubernetesAccess) throws -> String? {
        if let file = access.tokenFile {
            do {
                return try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw NodeProviderError("cannot read the token file \(file): \(error.localizedDescription)")
            }
        }
        return access.token
    }

    /// A query value with everything but unreserved characters (RFC 3986 §2.3) escaped.
    static func percentEncoded(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}
