import Foundation
import Logging
import ServeCore
import ServeHead
import ServeWorker

/// `provider: {type: local}`: each node is a `serve-worker` process on this machine, started
/// with its type's logical resources (`--num-cpus 2 --node-type cpu2 --node-id …`), so
/// autoscaling can be tried, and tested, on one machine. Its workers are the head's children:
/// they log to `<state-dir>/local-nodes/<node-id>.log` and are stopped (SIGTERM: they drain)
/// when the autoscaler terminates them or the head shuts down.
public actor LocalNodeProvider: NodeProvider {
    public nonisolated let kind = "local"

    private struct Worker {
        var process: ChildProcess
        var nodeType: String
        var exited: Int32?
        var stopping = false
    }

    private let workerPath: String
    private let context: NodeProviderContext
    private let logDirectory: URL
    private let logger: Logger
    private var workers: [String: Worker] = [:]
    /// Answers by request id (launches are idempotent per request).
    private var launched = LaunchAnswers()

    /// How long a terminated worker may take to drain before it is killed.
    static let gracePeriod: Duration = .seconds(10)

    public init(config: LocalProviderConfig, context: NodeProviderContext, logger: Logger = Logger(label: "serve.nodes.local")) throws {
        let path = config.workerPath ?? Self.workerNextToThisExecutable()
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw NodeProviderError(
                "the local provider's worker binary \(path) is not an executable file; build serve-worker next to serve-head, or set provider.worker_path")
        }
        self.workerPath = path
        self.context = context
        self.logDirectory = context.stateDirectory.appendingPathComponent("local-nodes")
        self.logger = logger
    }

    /// `serve-worker` in the directory of the running executable (`.build/debug/serve-head` →
    /// `.build/debug/serve-worker`).
    static func workerNextToThisExecutable() -> String {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let directory = FileManager.default.fileExists(atPath: executable.path)
            ? executable.deletingLastPathComponent()
            : URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return directory.appendingPathComponent("serve-worker").path
    }

    public func launch(_ request: NodeLaunchRequest) async throws -> [ProviderNode] {
        if let answer = self.launched[request.requestID] { return answer }
        try FileManager.default.createDirectory(at: self.logDirectory, withIntermediateDirectories: true)
        var environment = ProcessInfo.processInfo.environment
        environment["SERVE_TOKEN"] = self.context.token
        var started: [ProviderNode] = []
        for id in request.nodeIDs where self.workers[id] == nil {
            let log = self.logDirectory.appendingPathComponent("\(id).log").path
            // The workers listen on loopback: the head dials them on this machine.
            let argv = [self.workerPath] + self.context.workerArguments(nodeID: id, type: request.nodeType) + ["--listen-host", "127.0.0.1"]
            let process: ChildProcess
            do {
                process = try ChildProcess(argv: argv, environment: environment, workingDirectory: nil, logPath: log)
            } catch {
                // Stop what this request started, so a retry starts from nothing.
                for node in started {
                    self.workers[node.nodeID]?.process.signal(SIGKILL)
                    self.workers[node.nodeID] = nil
                }
                throw NodeProviderError("could not start \(self.workerPath): \(error)")
            }
            self.workers[id] = Worker(process: process, nodeType: request.nodeType.name)
            process.onExit { code in
                Task { await self.exited(id, code: code, log: log) }
            }
            started.append(ProviderNode(nodeID: id, nodeType: request.nodeType.name, state: "running"))
            self.logger.info("started a local worker", metadata: ["serve.node": "\(id)", "pid": "\(process.pid)", "log": "\(log)"])
        }
        self.launched.remember(request.requestID, started)
        return started
    }

    private func exited(_ id: String, code: Int32, log: String) {
        guard let worker = self.workers[id] else { return }
        self.workers[id]!.exited = code
        if worker.stopping {
            self.logger.info("a local worker stopped", metadata: ["serve.node": "\(id)", "status": "\(code)"])
        } else {
            self.logger.warning("a local worker exited", metadata: ["serve.node": "\(id)", "status": "\(code)", "log": "\(log)"])
        }
    }

    public func terminate(nodeIDs: [String], requestID: String) async throws {
        let running = nodeIDs.compactMap { id in self.workers[id].map { (id, $0) } }.filter { $0.1.exited == nil }
        for (id, worker) in running {
            self.workers[id]!.stopping = true
            worker.process.signal(SIGTERM)
        }
        let deadline = ContinuousClock.now + Self.gracePeriod
        for (id, worker) in running {
            while self.workers[id]?.exited == nil && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(20))
            }
            if self.workers[id]?.exited == nil {
                worker.process.signal(SIGKILL)
            }
        }
        for id in nodeIDs { self.workers[id] = nil }
    }

    public func nonTerminatedNodes() async throws -> [ProviderNode] {
        self.workers.filter { $0.value.exited == nil }.map { ProviderNode(nodeID: $0.key, nodeType: $0.value.nodeType, state: "running") }
            .sorted { $0.nodeID < $1.nodeID }
    }
}
