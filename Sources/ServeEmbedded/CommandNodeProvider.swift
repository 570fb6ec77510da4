import Foundation
import ServeCore
import ServeHead
import ServeWorker

/// `provider: {type: command, launch: …, terminate: …, list: …}`: the user's own commands start,
/// stop and list nodes, so any cloud CLI or script plugs in (examples in
/// `deploy/command-provider/`). Each command gets, as arguments and in its environment:
///
/// - launch: arguments `TYPE COUNT NODE_ID…`; it must start COUNT workers, each
///   `serve-worker --node-id NODE_ID $SERVE_WORKER_FLAGS` (with `SERVE_TOKEN` set), and may
///   answer `{"nodes": [{"node_id": …}]}` on stdout with the nodes it started.
/// - terminate: arguments `NODE_ID…`; it must stop them (ids it does not know are fine).
/// - list: no arguments; it answers `{"nodes": [{"node_id": …, "node_type": …, "state": …}]}`
///   with every node it runs that is not terminated.
///
/// Environment for all three: `SERVE_ADDRESS` (the cluster address workers dial),
/// `SERVE_TOKEN`, `SERVE_REQUEST_ID` (the same on a retry of the same request, for idempotent
/// scripts); for launch also `SERVE_NODE_TYPE`, `SERVE_NODE_COUNT`, `SERVE_NODE_IDS` (space
/// separated), `SERVE_NODE_RESOURCES` (the type's resources as JSON) and `SERVE_WORKER_FLAGS`
/// (the worker's flags for the type, shell-quoted: `eval "serve-worker --node-id $id
/// $SERVE_WORKER_FLAGS"`). A command that exits non-zero, prints something that is not the
/// expected JSON, or runs past `timeout_s` (then it is killed) fails the call, with its stderr
/// in the error.
public actor CommandNodeProvider: NodeProvider {
    public nonisolated let kind = "command"

    private let config: CommandProviderConfig
    private let context: NodeProviderContext
    private let scratch: URL
    /// Answers by request id: a launch asked again with the same id is not run again.
    private var launched = LaunchAnswers()

    public init(config: CommandProviderConfig, context: NodeProviderContext) {
        self.config = config
        var context = context
        if let address = config.headAddress { context.clusterAddress = address }
        self.context = context
        self.scratch = FileManager.default.temporaryDirectory.appendingPathComponent("serve-command-provider-\(UUID().uuidString)")
    }

    public func launch(_ request: NodeLaunchRequest) async throws -> [ProviderNode] {
        if let answer = self.launched[request.requestID] { return answer }
        let resources = JSONValue.object(request.nodeType.resources.quantities.mapValues { .number($0.doubleValue) })
        let output = try await self.run(
            "launch", self.config.launch, arguments: [request.nodeType.name, String(request.nodeIDs.count)] + request.nodeIDs,
            environment: [
                "SERVE_REQUEST_ID": request.requestID,
                "SERVE_NODE_TYPE": request.nodeType.name,
                "SERVE_NODE_COUNT": String(request.nodeIDs.count),
                "SERVE_NODE_IDS": request.nodeIDs.joined(separator: " "),
                "SERVE_NODE_RESOURCES": resources.jsonString(),
                "SERVE_WORKER_FLAGS": (["--address", self.context.clusterAddress] + request.nodeType.workerFlags).map(Self.shellQuoted).joined(separator: " "),
            ])
        let answer: [ProviderNode]
        if output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            answer = []
        } else {
            answer = try Self.nodes(in: output, command: "launch", defaultType: request.nodeType.name)
                .filter { request.nodeIDs.contains($0.nodeID) }
        }
        self.launched.remember(request.requestID, answer)
        return answer
    }

    public func terminate(nodeIDs: [String], requestID: String) async throws {
        _ = try await self.run(
            "terminate", self.config.terminate, arguments: nodeIDs,
            environment: ["SERVE_REQUEST_ID": requestID, "SERVE_NODE_IDS": nodeIDs.joined(separator: " ")])
    }

    public func nonTerminatedNodes() async throws -> [ProviderNode] {
        let output = try await self.run("list", self.config.list, arguments: [], environment: [:])
        return try Self.nodes(in: output, command: "list", defaultType: nil)
    }

    /// `{"nodes": [{"node_id": "…", "node_type": "…", "state": "…"}]}`.
    static func nodes(in output: String, command: String, defaultType: String?) throws -> [ProviderNode] {
        let value: JSONValue
        do {
            value = try JSONValue.parse(output)
        } catch {
            throw NodeProviderError("the \(command) command's output is not JSON (\(error)); it must print {\"nodes\": [{\"node_id\": …}]}: \(output.prefix(200))")
        }
        guard let entries = value["nodes"]?.arrayValue else {
            throw NodeProviderError("the \(command) command must print {\"nodes\": [...]}, not: \(output.prefix(200))")
        }
        return try entries.map { entry in
            guard let id = entry["node_id"]?.stringValue, !id.isEmpty else {
                throw NodeProviderError("the \(command) command listed a node without a node_id: \(entry.jsonString())")
            }
            guard let type = entry["node_type"]?.stringValue ?? defaultType else {
                throw NodeProviderError("the \(command) command listed node \(id) without a node_type")
            }
            return ProviderNode(nodeID: id, nodeType: type, state: entry["state"]?.stringValue ?? "running")
        }
    }

    /// Runs one command; returns its stdout, or throws with its stderr when it fails.
    private func run(_ name: String, _ argv: [String], arguments: [String], environment extra: [String: String]) async throws -> String {
        var environment = ProcessInfo.processInfo.environment
        environment["SERVE_ADDRESS"] = self.context.clusterAddress
        environment["SERVE_TOKEN"] = self.context.token
        environment.merge(extra) { _, new in new }
        return try await ProviderCommand.run(name, argv: argv + arguments, environment: environment, timeout: self.config.timeoutS, scratch: self.scratch)
    }

    /// POSIX shell single quoting.
    static func shellQuoted(_ word: String) -> String {
        if !word.isEmpty && word.allSatisfy({ $0.isLetter || $0.isNumber || "-_.:/=,@".contains($0) }) { return word }
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
