import ArgumentParser
import Foundation
import Logging
import NIOPosix
import ServeCore
import ServeWire
import ServeWorker
import ServiceLifecycle

/// `serve-control-sim`: N simulated worker nodes in one process, each with its own connection
/// and control stream to a real `serve-head`, for measuring the control plane at scale
/// (benchmarks/control_plane.py, issue 16). Replicas are bookkeeping only; nothing serves
/// requests, and the advertised data-plane addresses are never dialled.
@main
struct ServeControlSim: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve-control-sim",
        abstract: "Simulated worker nodes speaking the real control protocol to a serve-head.",
        discussion: """
            Control API (HTTP/1.1 JSON on --control-host:--control-port): GET /status, GET /nodes, \
            POST /load {"app","deployment","per_replica"}, POST /kill {"fraction","mode": reset|silent}, \
            POST /rejoin, POST /add {"nodes"}. See benchmarks/README.md, "Control plane at scale".
            """
    )

    @Option(help: "The head's cluster port, HOST:PORT.") var address: String
    @Option(help: "Cluster token (default: SERVE_TOKEN).") var token: String?
    @Option(help: "Simulated nodes to start.") var nodes = 10
    @Option(name: .customLong("cpus-per-node"), help: "Logical CPUs each node offers.") var cpusPerNode: Double = 10
    @Option(name: .customLong("memory-per-node"), help: "Memory each node offers, bytes.") var memoryPerNode: Double = 64 * 1024 * 1024 * 1024
    @Option(help: "Custom resources of each node as JSON, e.g. '{\"custom\": 2}'.") var resources: String?
    @Option(help: "Labels of each node, k=v,k2=v2.") var labels: String?
    @Option(name: .customLong("node-prefix"), help: "Node ids are this prefix and a four-digit number.") var nodePrefix = "sim-"
    @Option(name: .customLong("start-index"), help: "The number of the first node (several simulators can feed one head).") var startIndex = 0
    @Option(name: .customLong("handler-names"), help: "Handler names the nodes claim they can run, comma-separated.")
    var handlerNames = "echo,sleep,cpu,env"
    @Option(name: .customLong("heartbeat-interval-ms"), help: "Heartbeat this often (default 0: the interval the head's RegisterAnswer gives).")
    var heartbeatIntervalMs = 0
    @Option(help: "full: each node decodes and applies every route table, as a proxy does; version: it reads only each table's header (keeps the simulator's CPU off the head's measurement at scale).")
    var tables: TableMode = .full
    @Option(help: "full: every replica's load in every heartbeat; changes: the first heartbeat of a stream lists every replica, later ones only those that changed.")
    var heartbeats: HeartbeatMode = .changes
    @Option(name: .customLong("control-host"), help: "Where the control API listens.") var controlHost = "127.0.0.1"
    @Option(name: .customLong("control-port"), help: "The control API's port (0: any free port; printed).") var controlPort = 0
    @Option(help: "Event loop threads the nodes share.") var threads = 1
    @Option(name: .customLong("join-rate"), help: "Nodes started per second (0: all at once).") var joinRate: Double = 0
    @Option(name: .customLong("data-address"), help: "The data-plane address every node advertises (never dialled; default: TEST-NET-1).")
    var dataAddress = "192.0.2.1"
    @Option(name: .customLong("data-port-base"), help: "Node i advertises data-plane port base + i.") var dataPortBase = 20_000

    func run() async throws {
        let (openFiles, openFilesMax) = Self.raiseOpenFileLimit()
        guard let token = self.token ?? ProcessInfo.processInfo.environment["SERVE_TOKEN"], !token.isEmpty else {
            throw ValidationError("give the head's cluster token with --token or SERVE_TOKEN")
        }
        guard let colon = self.address.lastIndex(of: ":"), let port = Int(self.address[self.address.index(after: colon)...]) else {
            throw ValidationError("--address is HOST:PORT (the head's cluster port)")
        }
        guard self.nodes >= 0, self.threads >= 1, self.heartbeatIntervalMs >= 0, self.joinRate >= 0 else {
            throw ValidationError("--nodes, --heartbeat-interval-ms and --join-rate must be 0 or more, --threads at least 1")
        }
        let resources = NodeResources.make(
            numCPUs: self.cpusPerNode, numGPUs: 0, memory: self.memoryPerNode,
            custom: try NodeResources.parseCustom(self.resources), acceleratorType: nil, detectedGPUs: [])
        let options = FleetOptions(
            headHost: String(self.address[..<colon]),
            headPort: port,
            token: token,
            nodePrefix: self.nodePrefix,
            startIndex: self.startIndex,
            resources: resources,
            labels: try NodeResources.parseLabels(self.labels),
            handlerNames: self.handlerNames.split(separator: ",").map { String($0.trimmingCharacters(in: .whitespaces)) },
            heartbeatOverride: self.heartbeatIntervalMs > 0 ? .milliseconds(self.heartbeatIntervalMs) : nil,
            heartbeats: self.heartbeats,
            tables: self.tables,
            dataAddress: self.dataAddress,
            dataPortBase: self.dataPortBase,
            joinRate: self.joinRate
        )
        let group = MultiThreadedEventLoopGroup(numberOfThreads: self.threads)
        let fleet = SimFleet(options: options, group: group)
        let server = try await ControlAPI.bind(fleet: fleet, host: self.controlHost, port: self.controlPort)
        // Written unbuffered: the driver and the tests read the port from this line.
        let banner = "serve-control-sim: control API on http://\(self.controlHost):\(server.port) (\(self.nodes) nodes -> \(self.address), open files \(openFiles)/\(openFilesMax))\n"
        fleet.start(count: self.nodes)
        try await ServiceGroup(
            services: [
                ServerService("control API", server, gracePeriod: .seconds(1)),
                Announcements(ready: { FileHandle.standardOutput.write(Data(banner.utf8)) }),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: Logger(label: "serve-control-sim")
        ).run()
    }

    /// Raises the soft limit on open files to the hard one: a thousand nodes are a thousand
    /// sockets. Returns the limits now in force.
    static func raiseOpenFileLimit() -> (UInt64, UInt64) {
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0 else { return (0, 0) }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(resource, &raised) == 0 { limit = raised }
        }
        return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }
}

extension HeartbeatMode: ExpressibleByArgument {}
extension TableMode: ExpressibleByArgument {}
