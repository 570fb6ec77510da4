import ArgumentParser
import Foundation
import Logging
import Serve
import ServeCore
import ServeWire
import ServiceLifecycle
import UnixSignals

/// The flags of `serve-worker --address HEAD:6380` (one per machine besides the head), shared
/// by every worker binary: the stock one and custom ones that link their own deployments
/// (`examples/custom-worker`).
public struct WorkerCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "serve-worker",
        abstract: "Run a swift-serve worker that hosts replicas for the head at --address.",
        version: ServeVersion.string
    )

    /// The deployments this binary can run; a custom worker sets it before `main()`.
    nonisolated(unsafe) public static var registry = DeploymentRegistry.builtIn

    public init() {}

    /// Parses the process's arguments and runs the worker (what a worker binary's main calls).
    public static func runFromCommandLine() async {
        do {
            let command = try Self.parse()
            try await command.run()
        } catch {
            Self.exit(withError: error)
        }
    }

    @Option(help: "The head's cluster address, HOST:PORT.") var address: String
    @Option(name: .customLong("num-cpus"), help: "Logical CPUs (default: cores).") var numCPUs: Double?
    @Option(name: .customLong("num-gpus"), help: "Logical GPUs (default: detected, else 0).") var numGPUs: Double?
    @Option(help: "Memory in bytes (default: physical).") var memory: Double?
    @Option(help: "Custom resources as JSON, e.g. '{\"custom\": 2}'.") var resources: String?
    @Option(name: .customLong("accelerator-type"), help: "Accelerator type, e.g. A100.") var acceleratorType: String?
    @Option(help: "Labels k=v,k2=v2.") var labels: String?
    @Option(name: .customLong("node-type"), help: "Node type (set by the node autoscaler).") var nodeType = ""
    @Option(help: "Data-plane port (0: any free port, advertised at registration).") var port = 0
    @Option(name: .customLong("listen-host"), help: "Address the data plane listens on.") var listenHost = "0.0.0.0"
    @Option(name: .customLong("node-address"), help: "Address the head should dial (default: this side of the connection to the head).") var nodeAddress: String?
    @Option(name: .customLong("node-id"), help: "Node id (default: a new one).") var nodeID: String?
    @Option(help: "Cluster token (default: SERVE_TOKEN).") var token: String?
    @Option(name: .customLong("head-timeout-s"), help: "Dial the head again when it has been silent this long (seconds).") var headTimeoutS = 5.0
    @Option(name: .customLong("http-host"), help: "Address this node's HTTP proxy listens on (default: the config's http_options.host).") var httpHost: String?
    @Option(name: .customLong("http-port"), help: "Port of this node's HTTP proxy (default: the config's http_options.port; 0: any free port).") var httpPort: Int?
    @Option(name: .customLong("metrics-port"), help: "Serve this node's Prometheus metrics on this port (default: off; 0: any free port).") var metricsPort: Int?
    @Option(name: .customLong("drain-timeout-s"), help: "On SIGTERM, how long to wait for the head to move this node's replicas before stopping them (seconds).")
    var drainTimeoutS = NodeDrain.defaultTimeout
    @OptionGroup var logging: LoggingOptions

    public func run() async throws {
        try self.logging.bootstrap()
        guard let colon = self.address.lastIndex(of: ":"), let headPort = Int(self.address[self.address.index(after: colon)...]) else {
            throw ValidationError("--address must be HOST:PORT, e.g. 10.0.0.1:6380")
        }
        let headHost = String(self.address[..<colon])
        // The head pings every 0.5 s: a shorter timeout would drop a healthy control stream.
        guard self.headTimeoutS > 0.5 else {
            throw ValidationError("--head-timeout-s must be more than the head's 0.5 s ping interval (the default is 5)")
        }
        guard self.drainTimeoutS >= 0 else { throw ValidationError("--drain-timeout-s must be 0 or more") }
        for (flag, port) in [("--http-port", self.httpPort), ("--metrics-port", self.metricsPort)] {
            if let port, !(0...65535).contains(port) { throw ValidationError("\(flag) must be a TCP port (0-65535; 0: any free port)") }
        }
        guard let token = self.token ?? ProcessInfo.processInfo.environment["SERVE_TOKEN"], !token.isEmpty else {
            throw ValidationError("the worker needs the cluster token: --token or SERVE_TOKEN (serve-head prints it)")
        }
        let detected = NodeResources.detectedGPUs()
        let resources = NodeResources.make(
            numCPUs: self.numCPUs,
            numGPUs: self.numGPUs,
            memory: self.memory,
            custom: try NodeResources.parseCustom(self.resources),
            acceleratorType: self.acceleratorType,
            detectedGPUs: detected
        )
        var options = WorkerOptions(
            headHost: headHost,
            headPort: headPort,
            token: token,
            resources: resources,
            gpuIDs: NodeResources.gpuIDs(for: resources, detected: detected),
            labels: try NodeResources.parseLabels(self.labels),
            nodeType: self.nodeType,
            acceleratorType: self.acceleratorType ?? "",
            listenHost: self.listenHost,
            port: self.port,
            advertiseAddress: self.nodeAddress,
            headTimeout: .milliseconds(Int(self.headTimeoutS * 1000)),
            drainTimeout: .milliseconds(Int(self.drainTimeoutS * 1000)),
            registry: Self.registry
        )
        if let nodeID = self.nodeID { options.nodeID = nodeID }
        options.proxy = .own(host: self.httpHost, port: self.httpPort)
        options.metricsPort = self.metricsPort
        let worker = WorkerNode(options: options)
        let connecting = "serve-worker \(options.nodeID) connecting to \(self.address) with \(options.resources)\n"
        // SIGTERM/SIGINT: report DRAINING; the head moves the replicas elsewhere and stops them
        // here (in-flight requests finish); then exit 0. A second signal stops without waiting.
        let services = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    StopsOnSecondSignal(worker, logger: worker.logger),
                    Announcements(ready: { FileHandle.standardOutput.write(Data(connecting.utf8)) }),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: worker.logger
            )
        )
        do {
            try await services.run()
        } catch let refused as WorkerRefused {
            FileHandle.standardError.write(Data("serve-worker: \(refused)\n".utf8))
            throw ExitCode(2)
        }
    }
}

/// A service whose graceful shutdown may be cut short by the operator: once the group shuts it
/// down gracefully (the first SIGTERM or SIGINT), one more of either cancels it. The group itself
/// stops listening after the first signal, so this is the one place that hears a second. For the
/// worker that means: stop waiting for the head to move the replicas, stop them here (each still
/// within its graceful_shutdown_timeout_s) and exit.
struct StopsOnSecondSignal: Service, CustomStringConvertible {
    let service: any Service
    let logger: Logger
    var description: String { "\(self.service)" }

    init(_ service: any Service, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    func run() async throws {
        enum Outcome { case finished, signalledAgain, notShuttingDown }
        try await withThrowingTaskGroup(of: Outcome.self) { group in
            group.addTask {
                try await self.service.run()
                return .finished
            }
            group.addTask {
                do {
                    try await gracefulShutdown()
                } catch {
                    return .notShuttingDown
                }
                for await signal in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
                    self.logger.notice("\(signal) again: stopping now, without waiting for the drain")
                    return .signalledAgain
                }
                return .notShuttingDown
            }
            while let outcome = try await group.next() {
                switch outcome {
                case .finished:
                    group.cancelAll()
                    return
                case .signalledAgain:
                    group.cancelAll()
                case .notShuttingDown:
                    break
                }
            }
        }
    }
}
