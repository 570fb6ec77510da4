/// The head's failure detector: which nodes are ALIVE, DRAINING or DEAD, from what arrives on
/// their control streams. Like SWIM's `Instance` it does no I/O and reads no clock: the head's
/// controller feeds it events with the time (`now`, seconds on a monotonic clock) and carries out
/// the directives it returns.
///
/// A node is DEAD when its control stream closes (a crashed worker's kernel closes the socket at
/// once) or when nothing has arrived on the stream for `heartbeatTimeout` (a partition, a hung
/// process, a machine that lost power: nothing closes the socket then). A node whose heartbeat
/// says DRAINING (its worker got SIGTERM) is DRAINING until it leaves. A DEAD node comes back
/// only by registering again, on a new stream; anything still arriving on the stream it was
/// declared dead on is ignored, so a healed link cannot revive stale state.
public struct FailureDetector: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// A node not heard from for this long is DEAD (seconds). Workers send a heartbeat every
        /// 0.5 s, so the default of 5 s is ten missed
        /// heartbeats: long enough to ride out a busy machine or a lost packet's retransmits,
        /// short enough that a lost node's replicas are replaced within seconds.
        /// `serve-head --heartbeat-timeout-s`.
        public var heartbeatTimeout: Double

        public static let defaultHeartbeatTimeout = 5.0

        public init(heartbeatTimeout: Double = Self.defaultHeartbeatTimeout) {
            self.heartbeatTimeout = heartbeatTimeout
        }
    }

    /// What the controller must do.
    public enum Directive: Sendable, Hashable {
        /// The node is DEAD: forget its replicas (start replacements elsewhere), stop routing to
        /// it, fail requests in flight on it, and end its control stream.
        case declareDead(nodeID: String, reason: String)
        /// The node is DRAINING: start replacements for its replicas elsewhere, then stop them
        /// there; place nothing new on it.
        case markDraining(nodeID: String)
    }

    struct Member: Sendable, Hashable {
        var connection: Int
        var lastHeard: Double
        var state: NodeState
    }

    public let configuration: Configuration
    private var members: [String: Member] = [:]

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// The node registered on a new control stream (`connection` numbers streams; a newer one
    /// replaces the old). It is ALIVE, whatever it was.
    public mutating func registered(_ nodeID: String, connection: Int, now: Double) {
        self.members[nodeID] = Member(connection: connection, lastHeard: now, state: .alive)
    }

    /// Something (a heartbeat, a state report, an ack) arrived on the node's stream.
    /// `draining`: the heartbeat says the worker is shutting down.
    public mutating func heard(from nodeID: String, connection: Int, draining: Bool = false, now: Double) -> [Directive]
    {
        guard var member = self.members[nodeID], member.connection == connection, member.state != .dead else {
            return []
        }
        member.lastHeard = max(member.lastHeard, now)
        var directives: [Directive] = []
        if draining && member.state.canMove(to: .draining) {
            member.state = .draining
            directives.append(.markDraining(nodeID: nodeID))
        }
        self.members[nodeID] = member
        return directives
    }

    /// The head drains the node itself (the node autoscaler is about to terminate it): it is
    /// DRAINING, as if its worker had said so, when that is a legal move.
    public mutating func drain(_ nodeID: String) -> [Directive] {
        guard var member = self.members[nodeID], member.state.canMove(to: .draining) else { return [] }
        member.state = .draining
        self.members[nodeID] = member
        return [.markDraining(nodeID: nodeID)]
    }

    /// The node's control stream ended (closed, reset, or failed).
    public mutating func streamEnded(_ nodeID: String, connection: Int, now: Double) -> [Directive] {
        guard var member = self.members[nodeID], member.connection == connection, member.state != .dead else {
            return []
        }
        member.state = .dead
        self.members[nodeID] = member
        return [.declareDead(nodeID: nodeID, reason: "its control stream closed")]
    }

    /// The periodic check: every live node not heard from within the timeout is DEAD.
    public mutating func tick(now: Double) -> [Directive] {
        var directives: [Directive] = []
        for (nodeID, member) in self.members.sorted(by: { $0.key < $1.key }) where member.state != .dead {
            let silent = now - member.lastHeard
            guard silent >= self.configuration.heartbeatTimeout else { continue }
            self.members[nodeID]?.state = .dead
            let shown = (silent * 10).rounded() / 10
            directives.append(
                .declareDead(
                    nodeID: nodeID,
                    reason: "no heartbeat for \(shown) s (heartbeat timeout \(self.configuration.heartbeatTimeout) s)"
                )
            )
        }
        return directives
    }

    /// When the next node would time out, if none is heard from before (for the driver's timer).
    public var nextDeadline: Double? {
        self.members.values.filter { $0.state != .dead }.map { $0.lastHeard + self.configuration.heartbeatTimeout }
            .min()
    }

    public func state(of nodeID: String) -> NodeState? {
        self.members[nodeID]?.state
    }

    /// Whether `connection` is the node's current stream (a report on an older one is stale).
    public func isCurrent(_ nodeID: String, connection: Int) -> Bool {
        self.members[nodeID]?.connection == connection
    }
}

extension NodeState {
    /// Legal moves, as SWIM's `Status` lists them: ALIVE may drain or die, DRAINING may die, and
    /// DEAD is final for that stream (the node returns only by registering again, which starts a
    /// new life as ALIVE).
    public var legalNextStates: Set<NodeState> {
        switch self {
        case .alive: [.draining, .dead]
        case .draining: [.dead]
        case .dead: []
        }
    }

    public func canMove(to next: NodeState) -> Bool {
        self.legalNextStates.contains(next)
    }
}

/// What happens to the replicas a worker says it still runs when it registers (DESIGN.md: a
/// worker that reconnects keeps its running replicas rather than restarting them; issue 7: a
/// worker cut off and declared DEAD must not serve stale replicas beyond the config).
public enum ReplicaAdoption {
    public enum Decision: Sendable, Hashable {
        case adopt
        case stop(reason: String)
    }

    /// - A replica the head still knows (a reconnect the head never saw fail): keep it; the
    ///   reconciler goes on managing it as before.
    /// - A replica of a deployment no longer deployed, of an older spec, or not RUNNING: stop.
    /// - A replica the head does not know (its node was declared DEAD and replacements were
    ///   started, or the head itself restarted): adopt it while its deployment has fewer placed
    ///   current replicas than its target; otherwise stop it, so the healed node never runs
    ///   more than the config asks for.
    /// - `liveCurrent` counts the deployment's current-spec replicas the head has placed on a
    ///   node (STARTING or RUNNING), adoptions made so far in this registration included.
    ///   PENDING ones do not count: a running replica is worth more than one waiting for room,
    ///   and the reconciler drops surplus PENDING replicas first.
    public static func decide(
        deployed: Bool,
        currentSpec: Bool,
        running: Bool,
        known: Bool,
        liveCurrent: Int,
        target: Int
    ) -> Decision {
        if known { return .adopt }
        guard deployed else { return .stop(reason: "its deployment is no longer deployed") }
        guard currentSpec else { return .stop(reason: "it runs an older version of its deployment") }
        guard running else { return .stop(reason: "it was not running when its node registered") }
        guard liveCurrent < target else {
            return .stop(
                reason: "its node was declared dead and replacements already run (\(liveCurrent) of \(target))"
            )
        }
        return .adopt
    }
}

extension FailureDetector {
    /// The other way round: a worker gives up on a head it has not heard from for
    /// `headTimeout` seconds (`serve-worker --head-timeout-s`), so the head pings it, whether or
    /// not it has sent it anything else. Pings go out in rounds `round` seconds apart; this is every how many
    /// rounds a worker is pinged: at least three pings within its timeout (one lost or late ping
    /// is not a silent head), and no more often, since at a thousand nodes every ping round is a
    /// thousand messages. Every round for a worker that did not say (0).
    public static func pingEvery(headTimeout: Double, round: Double) -> Int {
        guard headTimeout.isFinite, headTimeout > 0, round > 0 else { return 1 }
        return max(1, Int((headTimeout / 3 / round).rounded(.down)))
    }
}

/// Which of one node's heartbeats the head's controller needs to see. A heartbeat that
/// changes nothing (no replica's load or models, not its proxy, no requests waiting now or at
/// the last one it saw, not draining) only shows the node alive, and the failure detector needs
/// that only every so often: such heartbeats are passed on at most every `interval` seconds
/// (a fifth of the heartbeat timeout, at most 1 s), and the others dropped where they arrive.
/// At 1,000 nodes at rest that keeps most of 2,000 heartbeats a second off the controller.
///
/// Pure: `now` is passed in (seconds, monotonic); one per control stream.
public struct QuietHeartbeats: Sendable {
    public let interval: Double
    private var lastPassed = -Double.infinity
    private var waitingBefore = false

    public init(heartbeatTimeout: Double) {
        self.interval = min(1, max(0, heartbeatTimeout / 5))
    }

    /// Whether this heartbeat goes to the controller. `changes`: it lists replicas, its proxy
    /// or a drain; `waiting`: it reports requests waiting at the node's routers.
    public mutating func pass(changes: Bool, waiting: Bool, now: Double) -> Bool {
        let quiet = !changes && !waiting && !self.waitingBefore
        if quiet && now - self.lastPassed < self.interval { return false }
        self.lastPassed = now
        self.waitingBefore = waiting
        return true
    }
}
