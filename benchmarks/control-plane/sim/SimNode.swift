import Foundation
import NIOConcurrencyHelpers
import NIOCore
import ServeCore
import ServeProto
import ServeProxy
import ServeWire
import Synchronization

/// A replica on a simulated node: bookkeeping only, nothing runs.
struct SimReplica: Sendable, Hashable {
    var id: String
    var deployment: DeploymentID
    var specVersion: String
    var state: PBReplicaState
    var grant: PBResourceGrant
}

/// How a node is taken out (`POST /kill`).
enum KillMode: String, Sendable {
    /// A crash: the connection is reset (SO_LINGER 0), so the head sees its stream end at once;
    /// the node's replicas and table are gone, as with a process that died.
    case reset
    /// A partition or a hung machine: the node stops sending and reading but keeps its socket
    /// open, so the head must notice the silence (its heartbeat timeout). The node keeps its
    /// replicas, and reports them when it registers again.
    case silent
}

/// One simulated worker: its own TCP connection and control stream to the head, speaking the
/// real protocol (register, heartbeats with per-replica loads and the proxy's table version,
/// replica state reports, pongs), with replicas that are bookkeeping only. Its task runs on its
/// event loop (`executor`), so the connection's calls need no thread hop.
final class SimNode: Sendable {
    let index: Int
    let id: String
    let fleet: SimFleet
    let loop: any EventLoop
    let executor: EventLoopTaskExecutor
    /// Control-plane bytes on this node's connections (`ByteCounter`), all streams together.
    let bytesIn = Atomic<Int>(0)
    let bytesOut = Atomic<Int>(0)
    private let state = NIOLockedValueBox(State())
    /// Wakes a node waiting to rejoin (`rejoin`).
    private let rejoinSignals: AsyncStream<Void>
    private let rejoinSignal: AsyncStream<Void>.Continuation

    enum Phase: String, Sendable {
        case connecting, registered, killed, refused
    }

    struct State: Sendable {
        var phase: Phase = .connecting
        var killed: KillMode?
        /// A rejoin asked for while the node was still connected (silent): no backoff before it dials.
        var rejoining = false
        var channel: (any Channel)?
        var replicas: [String: SimReplica] = [:]
        /// The node's copy of the head's route table (whole when it registers, then changes).
        var table = SimTable()
        /// Wakes this stream's heartbeat sender (`heartbeatDue`), while registered.
        var heartbeatTick: AsyncStream<Void>.Continuation?
        var lastError: String?
    }

    init(index: Int, id: String, fleet: SimFleet, loop: any EventLoop) {
        self.index = index
        self.id = id
        self.fleet = fleet
        self.loop = loop
        self.executor = EventLoopTaskExecutor(loop)
        (self.rejoinSignals, self.rejoinSignal) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    var snapshot: State { self.state.withLockedValue { $0 } }

    /// Starts the node's task on its event loop.
    func start() {
        Task(executorPreference: self.executor) { await self.run() }
    }

    /// Dials, registers and serves the control stream; dials again (with backoff, as a worker
    /// does) when the stream ends, until killed; a killed node waits for `rejoin`.
    private func run() async {
        var rejoins = self.rejoinSignals.makeAsyncIterator()
        var backoff: Duration = .milliseconds(100)
        var dialled = false
        while true {
            while self.state.withLockedValue({ $0.killed != nil }) {
                _ = await rejoins.next()
            }
            let rejoining = self.state.withLockedValue { state in
                defer { state.rejoining = false }
                return state.rejoining
            }
            if dialled && !rejoining { self.fleet.counters.reconnects.add(1, ordering: .relaxed) }
            dialled = true
            do {
                try await self.connectOnce { backoff = .milliseconds(100) }
            } catch let error as Refused {
                self.state.withLockedValue {
                    $0.phase = .refused
                    $0.lastError = error.description
                }
                self.fleet.counters.refusals.add(1, ordering: .relaxed)
                return
            } catch {
                self.state.withLockedValue { $0.lastError = "\(error)" }
            }
            let wait = self.state.withLockedValue { state -> Bool in
                state.channel = nil
                if state.killed == nil { state.phase = .connecting }
                return state.killed == nil && !state.rejoining
            }
            if wait {
                try? await Task.sleep(for: backoff + .milliseconds(Int.random(in: 0...50)))
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }

    struct Refused: Error, CustomStringConvertible {
        var description: String
    }

    private func connectOnce(onRegistered: () -> Void) async throws {
        let options = self.fleet.options
        let connection = try await HTTP2ClientConnection.connect(
            host: options.headHost, port: options.headPort, eventLoopGroup: self.loop)
        try await connection.channel.pipeline.addHandler(ByteCounter(node: self), position: .first).get()
        let attached = self.state.withLockedValue { state -> Bool in
            guard state.killed == nil else { return false }
            state.channel = connection.channel
            return true
        }
        defer { Task { await connection.closeNow() } }
        guard attached else { return }
        let client = RPCClient(connection: connection, metadata: [.authorization: "Bearer \(options.token)"])
        let call = try await client.bidirectional(
            ControlPaths.connect, requestType: PBWorkerMessage.self, responseType: HeadEnvelope.self)
        let link = ControlLink(call: call, counters: self.fleet.counters)
        try await link.send(.register(self.registration(address: options.dataAddress)))
        var responses = try await call.responses().makeAsyncIterator()
        let first: HeadEnvelope?
        do {
            first = try await responses.next()
        } catch let error as RPCError where error.code == .unauthenticated || error.code == .permissionDenied {
            throw Refused(description: "the head refused the token: \(error.message)")
        }
        guard let first, case .registerAnswer(let answer)? = first.kind else {
            throw RPCError(.internal, "the head did not answer the registration")
        }
        guard answer.accepted else { throw Refused(description: "the head refused the registration: \(answer.refusalReason)") }
        onRegistered()
        self.fleet.registered(heartbeatIntervalMs: answer.heartbeatIntervalMs)
        let (ticks, tick) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let live = self.state.withLockedValue { state -> Bool in
            guard state.killed == nil else { return false }
            state.phase = .registered
            state.heartbeatTick = tick
            return true
        }
        defer { self.state.withLockedValue { $0.heartbeatTick = nil } }
        guard live else { return }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Heartbeats: one at once (as a worker sends on registering), then one whenever the
            // fleet's timer says this node's turn has come (`heartbeatDue`).
            group.addTask {
                var tracker = HeartbeatTracker(mode: self.fleet.options.heartbeats)
                var number: UInt64 = 0
                var iterator = ticks.makeAsyncIterator()
                repeat {
                    guard let heartbeat = self.heartbeat(number: number + 1, tracker: &tracker) else { continue }
                    number += 1
                    try await link.send(.heartbeat(heartbeat))
                    self.fleet.counters.heartbeats.add(1, ordering: .relaxed)
                } while await iterator.next() != nil
            }
            defer { group.cancelAll() }
            while let message = try await responses.next() {
                self.fleet.counters.received(message)
                try await self.handle(message, link)
            }
        }
    }

    /// The registration: a fake data-plane address (never dialled), the fleet's resources and
    /// handler names, and the replicas this node still has (after a partition or a dropped stream).
    private func registration(address: String) -> PBRegisterNode {
        let options = self.fleet.options
        var register = PBRegisterNode()
        register.nodeID = self.id
        register.protocolVersion = ControlPaths.protocolVersion
        // A worker's default --head-timeout-s: the head pings it as often as it pings those.
        register.headTimeoutMs = 5000
        register.address = address
        register.port = UInt32(options.dataPortBase + self.index % 40_000)
        register.totalResources = PBResourceSet.with { $0.quantitiesE4 = options.resources.quantitiesE4 }
        register.labels = options.labels
        register.workerVersion = "serve-control-sim"
        register.handlerNames = options.handlerNames
        register.startedAtUnixMs = self.fleet.startedAtUnixMs
        for replica in self.state.withLockedValue({ Array($0.replicas.values) }) {
            register.runningReplicas.append(PBRunningReplica.with {
                $0.replicaID = replica.id
                $0.appName = replica.deployment.app
                $0.deploymentName = replica.deployment.name
                $0.specVersion = replica.specVersion
                $0.state = replica.state
                $0.grant = replica.grant
            })
        }
        return register
    }

    /// This stream's next heartbeat; nil while the node plays dead (`silent`).
    private func heartbeat(number: UInt64, tracker: inout HeartbeatTracker) -> PBHeartbeat? {
        let (silent, replicas, version) = self.state.withLockedValue {
            ($0.killed != nil, Array($0.replicas.values), $0.table.version)
        }
        guard !silent else { return nil }
        let loads = self.fleet.loads.withLockedValue { $0 }
        let samples = replicas.map {
            ReplicaLoadSample(replicaID: $0.id, running: UInt32(clamping: loads.perReplica($0.deployment)), state: $0.state)
        }
        var heartbeat = PBHeartbeat()
        heartbeat.nodeID = self.id
        heartbeat.sequence = number
        heartbeat.sentAtUnixMs = Self.unixMs
        heartbeat.health = PBNodeHealth.with { $0.status = .ok }
        let proxy = PBProxyReport.with {
            $0.status = .healthy
            $0.tableEpoch = version?.epoch ?? 0
            $0.tableSequence = version?.sequence ?? 0
        }
        if let proxy = tracker.proxy(proxy) { heartbeat.proxy = proxy }
        heartbeat.replicas = tracker.select(samples).map { sample in
            PBReplicaLoad.with {
                $0.replicaID = sample.replicaID
                $0.runningRequests = sample.running
                $0.state = sample.state
            }
        }
        return heartbeat
    }

    private func handle(_ message: HeadEnvelope, _ link: ControlLink) async throws {
        // A node playing dead answers nothing (what it read before it went silent included).
        guard self.state.withLockedValue({ $0.killed == nil }) else { return }
        if let routes = message.routes {
            // As a worker does (`WorkerNode`): a change from a table not held ends the stream,
            // and the node registers again for the whole table.
            let mode = self.fleet.options.tables
            guard let (version, replicas, made) = try self.state.withLockedValue({ try $0.table.receive(routes, mode: mode) }) else { return }
            self.fleet.tableArrived(version, replicas: replicas, madeUnixMs: made)
            return
        }
        switch message.kind {
        case .startReplica(let start):
            let deployment = DeploymentID(app: start.appName, name: start.deploymentName)
            let fresh = self.state.withLockedValue { state -> Bool in
                guard state.replicas[start.replicaID] == nil else { return false }
                state.replicas[start.replicaID] = SimReplica(
                    id: start.replicaID, deployment: deployment, specVersion: start.spec.version, state: .running,
                    grant: start.grant)
                return true
            }
            guard fresh else { return }
            try await link.send(.replicaState(Self.report(start.replicaID, .starting, spec: start.spec.version)), inReplyTo: message.sequence)
            try await link.send(.replicaState(Self.report(start.replicaID, .running, spec: start.spec.version)))
        case .stopReplica(let stop):
            let removed = self.state.withLockedValue { $0.replicas.removeValue(forKey: stop.replicaID) }
            let report = Self.report(
                stop.replicaID, .stopped, spec: removed?.specVersion ?? "", message: removed == nil ? "not running on this node" : stop.reason)
            try await link.send(.replicaState(report), inReplyTo: message.sequence)
        case .reconfigureReplica(let change):
            let known = self.state.withLockedValue { state -> Bool in
                guard state.replicas[change.replicaID] != nil else { return false }
                if !change.specVersion.isEmpty { state.replicas[change.replicaID]?.specVersion = change.specVersion }
                return true
            }
            try await link.send(
                .ack(PBCommandAck.with {
                    $0.accepted = known
                    $0.message = known ? "" : "no replica \(change.replicaID) on node \(self.id)"
                }),
                inReplyTo: message.sequence)
        case .ping:
            // Not answered, as by a worker: the heartbeats show the node alive.
            break
        case .routes, .registerAnswer, .none:
            break
        }
    }

    private static func report(_ replicaID: String, _ state: PBReplicaState, spec: String, message: String = "") -> PBReplicaStateReport {
        PBReplicaStateReport.with {
            $0.replicaID = replicaID
            $0.state = state
            $0.specVersion = spec
            $0.message = message
            $0.atUnixMs = Self.unixMs
        }
    }

    static var unixMs: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    // MARK: the fleet's controls

    /// The fleet's timer says it is this node's turn to send a heartbeat.
    func heartbeatDue() {
        self.state.withLockedValue { $0.heartbeatTick }?.yield()
    }

    /// Takes the node out (`KillMode`). False when it was not registered.
    @discardableResult
    func kill(_ mode: KillMode) -> Bool {
        let channel = self.state.withLockedValue { state -> (any Channel)?? in
            guard state.phase == .registered, state.killed == nil else { return nil }
            state.killed = mode
            state.phase = .killed
            if mode == .reset {
                state.replicas = [:]
                state.table = SimTable()
            }
            return .some(state.channel)
        }
        guard let channel else { return false }
        guard let channel else { return true }
        switch mode {
        case .reset:
            // An RST, not a FIN: what the head sees when a machine's kernel drops the connection.
            channel.eventLoop.execute {
                let linger = (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
                    ?? channel.eventLoop.makeSucceededVoidFuture()
                linger.whenComplete { _ in channel.close(promise: nil) }
            }
        case .silent:
            // Nothing read from now on: the head's writes fill the socket's buffers, and no
            // heartbeat or pong leaves (`heartbeat`, `handle`).
            channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
        return true
    }

    /// Brings a killed node back: it registers again at once (a silent one on a new connection,
    /// with the replicas it kept).
    @discardableResult
    func rejoin() -> Bool {
        let (wasKilled, channel) = self.state.withLockedValue { state -> (Bool, (any Channel)?) in
            guard state.killed != nil else { return (false, nil) }
            state.killed = nil
            state.phase = .connecting
            state.rejoining = true
            return (true, state.channel)
        }
        guard wasKilled else { return false }
        channel?.close(promise: nil)
        self.rejoinSignal.yield()
        return true
    }
}

/// One control stream's sender: numbers the messages (`WorkerMessage.sequence`) and counts them.
struct ControlLink: Sendable {
    let call: RPCBidirectionalCall<PBWorkerMessage, HeadEnvelope>
    let counters: FleetCounters
    private let sequence = NIOLockedValueBox<UInt64>(0)

    init(call: RPCBidirectionalCall<PBWorkerMessage, HeadEnvelope>, counters: FleetCounters) {
        self.call = call
        self.counters = counters
    }

    func send(_ kind: PBWorkerMessage.OneOf_Kind, inReplyTo: UInt64 = 0) async throws {
        var message = PBWorkerMessage()
        message.sequence = self.sequence.withLockedValue { $0 += 1; return $0 }
        message.inReplyTo = inReplyTo
        message.kind = kind
        try await self.call.send(message)
        self.counters.sent.add(1, ordering: .relaxed)
    }
}

/// Counts a node's control-plane bytes at the socket (HTTP/2 framing included), sitting first
/// in its channel's pipeline.
final class ByteCounter: ChannelDuplexHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let node: SimNode

    init(node: SimNode) {
        self.node = node
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.node.bytesIn.add(self.unwrapInboundIn(data).readableBytes, ordering: .relaxed)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.node.bytesOut.add(self.unwrapOutboundIn(data).readableBytes, ordering: .relaxed)
        context.write(data, promise: promise)
    }
}
