// `serve simulate` (DESIGN.md "Autoscaling"): a load trace replayed through the real autoscaling
// policy on a virtual clock. Pure: no I/O, no clocks, no randomness; the CLI reads the files and
// writes the output.

// MARK: - Load trace

/// A load trace: what the clients do over time, a CSV file with a header naming its form.
///
/// ```
/// time_s,clients,service_ms        # closed loop: N clients, each sends, waits, sends again
/// 0,0,100
/// 2,16,100
/// 22,0,100
/// 52,0,100                         # the last row's time ends the run
/// ```
///
/// `time_s,rate_rps,service_ms` is the open-loop form: requests arrive evenly spaced at
/// `rate_rps`, whatever the answers. Each row holds from its time until the next row's; before the
/// first row there is no load. Blank lines and lines starting with `#` are skipped.
public struct LoadTrace: Sendable, Hashable {
    /// How the load column reads.
    public enum Mode: String, Sendable, Hashable {
        /// Closed loop: `clients` concurrent clients, each sending its next request as soon as
        /// the previous one is answered (after a 503, a short back-off first).
        case clients
        /// Open loop: `rate_rps` requests per second arrive, evenly spaced.
        case rateRPS = "rate_rps"

        /// The CSV header of this form.
        public var header: String { "time_s,\(self.rawValue),service_ms" }
    }

    /// One row: from `time` on, this load, each request taking `serviceMs` on a replica.
    public struct Row: Sendable, Hashable {
        public var time: Double
        /// Clients (a whole number) or requests per second.
        public var load: Double
        public var serviceMs: Double

        public init(time: Double, load: Double, serviceMs: Double) {
            self.time = time
            self.load = load
            self.serviceMs = serviceMs
        }
    }

    public var mode: Mode
    /// In time order, strictly increasing.
    public var rows: [Row]
    /// When the run ends (seconds): the last row's time unless set (`--duration`).
    public var duration: Double

    public init(mode: Mode, rows: [Row], duration: Double? = nil) {
        self.mode = mode
        self.rows = rows
        self.duration = duration ?? rows.last?.time ?? 0
    }

    /// The row in force at `time`, nil before the first.
    public func row(at time: Double) -> Row? {
        self.rows.last { $0.time <= time }
    }

    /// When the load first rises above where it started (nil if it never does).
    public var firstIncrease: Double? {
        var previous = 0.0
        for row in self.rows {
            if row.load > previous { return row.time }
            previous = row.load
        }
        return nil
    }

    /// When the load last drops to 0 and stays there to the end (nil if it never stops, or was
    /// never on).
    public var stop: Double? {
        guard let last = self.rows.last, last.load == 0 else { return nil }
        var stop: Double?
        var previous = 0.0
        for row in self.rows {
            if row.load == 0, previous > 0 { stop = row.time }
            previous = row.load
        }
        return stop
    }

    /// Parses the CSV form described on the type. Errors name the line (1-based).
    public static func parse(csv: String) throws(LoadTraceError) -> LoadTrace {
        var mode: Mode?
        var rows: [Row] = []
        var lineNumber = 0
        // The last line with anything on it, for errors about the end of the file.
        var lastLine = 1
        // "\r\n" is one Character, so it is a separator of its own.
        for rawLine in csv.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) {
            lineNumber += 1
            let line = Self.trim(Substring(rawLine))
            if !line.isEmpty { lastLine = lineNumber }
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map { Self.trim($0) }
            guard let form = mode else {
                let header = fields.map { $0.lowercased() }.joined(separator: ",")
                if let found = [Mode.clients, .rateRPS].first(where: { $0.header == header }) {
                    mode = found
                    continue
                }
                let expected = "expected the header `\(Mode.clients.header)` (closed loop) or `\(Mode.rateRPS.header)` (open loop)"
                if let first = fields.first, Double(first) != nil {
                    throw LoadTraceError(line: lineNumber, message: "\(expected) before the rows, got the row `\(line)`")
                }
                throw LoadTraceError(line: lineNumber, message: "\(expected), got `\(line)`")
            }
            guard fields.count == 3 else {
                throw LoadTraceError(
                    line: lineNumber,
                    message: "expected 3 fields (\(form.header.replacingComma())), got \(fields.count): `\(line)`"
                )
            }
            func number(_ index: Int, _ name: String) throws(LoadTraceError) -> Double {
                guard let value = Double(fields[index]), value.isFinite else {
                    throw LoadTraceError(line: lineNumber, message: "\(name) `\(fields[index])` is not a number")
                }
                return value
            }
            let time = try number(0, "time_s")
            let load = try number(1, form.rawValue)
            let service = try number(2, "service_ms")
            guard time >= 0 else {
                throw LoadTraceError(line: lineNumber, message: "time_s \(Self.format(time)) is negative")
            }
            if let previous = rows.last, time <= previous.time {
                throw LoadTraceError(
                    line: lineNumber,
                    message: "time_s \(Self.format(time)) is not after the previous row's \(Self.format(previous.time))"
                )
            }
            switch form {
            case .clients:
                guard load >= 0, load == load.rounded(), load <= 1_000_000 else {
                    throw LoadTraceError(line: lineNumber, message: "clients must be a whole number from 0 to 1000000, got \(fields[1])")
                }
            case .rateRPS:
                guard load >= 0, load <= 1_000_000 else {
                    throw LoadTraceError(line: lineNumber, message: "rate_rps must be from 0 to 1000000, got \(fields[1])")
                }
            }
            guard service > 0 else {
                throw LoadTraceError(line: lineNumber, message: "service_ms must be positive, got \(fields[2])")
            }
            rows.append(Row(time: time, load: load, serviceMs: service))
        }
        guard let form = mode else {
            throw LoadTraceError(line: lastLine, message: "the trace is empty: expected the header `\(Mode.clients.header)` or `\(Mode.rateRPS.header)` and rows")
        }
        guard !rows.isEmpty else {
            throw LoadTraceError(line: lastLine, message: "no rows after the header `\(form.header)`")
        }
        return LoadTrace(mode: form, rows: rows)
    }

    static func trim(_ text: Substring) -> String {
        var text = text
        while let first = text.first, first == " " || first == "\t" || first == "\r" { text.removeFirst() }
        while let last = text.last, last == " " || last == "\t" || last == "\r" { text.removeLast() }
        return String(text)
    }

    static func format(_ value: Double) -> String {
        AutoscalingPolicy.format(value)
    }
}

extension String {
    fileprivate func replacingComma() -> String {
        self.split(separator: ",").joined(separator: ", ")
    }
}

/// A trace that does not parse: which line, and what is wrong with it.
public struct LoadTraceError: Error, Sendable, Hashable, CustomStringConvertible {
    /// 1-based.
    public var line: Int
    public var message: String

    public init(line: Int, message: String) {
        self.line = line
        self.message = message
    }

    public var description: String {
        "line \(self.line): \(self.message)"
    }
}

// MARK: - Results

/// One row of the timeline, taken every `step` seconds: the state at `time`, and what finished
/// in the step that ends there.
public struct SimulationRow: Sendable, Hashable {
    /// Seconds since the start of the trace.
    public var time: Double
    /// The trace's load in force: clients, or requests per second.
    public var load: Double
    /// Requests running on replicas (draining ones included).
    public var ongoing: Int
    /// Requests waiting at the router for a free replica slot.
    public var queued: Int
    /// The autoscaler's target replica count.
    public var target: Int
    /// RUNNING replicas (not starting, not draining).
    public var running: Int
    /// Requests answered in the step.
    public var completed: Int
    /// Requests answered 503 (router queue past `max_queued_requests`) in the step.
    public var rejected: Int
    /// Latency (arrival at the router to answer) of the requests answered in the step; nil when
    /// none were.
    public var p50Ms: Double?
    public var p99Ms: Double?

    public init(
        time: Double, load: Double, ongoing: Int, queued: Int, target: Int, running: Int,
        completed: Int, rejected: Int, p50Ms: Double?, p99Ms: Double?
    ) {
        self.time = time
        self.load = load
        self.ongoing = ongoing
        self.queued = queued
        self.target = target
        self.running = running
        self.completed = completed
        self.rejected = rejected
        self.p50Ms = p50Ms
        self.p99Ms = p99Ms
    }
}

/// A change of the target, as the controller would record it.
public struct SimulationDecision: Sendable, Hashable {
    public var time: Double
    public var before: Int
    public var after: Int
    public var reason: String

    public init(time: Double, before: Int, after: Int, reason: String) {
        self.time = time
        self.before = before
        self.after = after
        self.reason = reason
    }
}

/// The headline numbers of a run, at tick resolution.
public struct SimulationSummary: Sendable, Hashable {
    /// Whether the deployment is autoscaled (else its fixed count holds throughout).
    public var autoscaled: Bool
    /// The most RUNNING replicas at once, and the highest target.
    public var maxRunning: Int
    public var maxTarget: Int
    /// The deployment's lower bound (`min_replicas`, or the fixed count).
    public var minReplicas: Int
    /// When the load first rose, and how long after that the target first rose (nil: never).
    public var loadIncreaseAt: Double?
    public var firstScaleUpAfter: Double?
    /// How long after the load first rose `maxRunning` replicas were first RUNNING.
    public var maxReachedAfter: Double?
    /// When the load stopped for good, and how long after that the target and the RUNNING
    /// count were both back at `minReplicas` (nil: not within the run).
    public var loadStopAt: Double?
    public var backToMinAfter: Double?
    public var completed: Int
    public var rejected: Int

    public init(
        autoscaled: Bool = true, maxRunning: Int, maxTarget: Int, minReplicas: Int, loadIncreaseAt: Double?, firstScaleUpAfter: Double?,
        maxReachedAfter: Double?, loadStopAt: Double?, backToMinAfter: Double?, completed: Int, rejected: Int
    ) {
        self.autoscaled = autoscaled
        self.maxRunning = maxRunning
        self.maxTarget = maxTarget
        self.minReplicas = minReplicas
        self.loadIncreaseAt = loadIncreaseAt
        self.firstScaleUpAfter = firstScaleUpAfter
        self.maxReachedAfter = maxReachedAfter
        self.loadStopAt = loadStopAt
        self.backToMinAfter = backToMinAfter
        self.completed = completed
        self.rejected = rejected
    }

    /// One line: "max 4 replicas; first scale-up 1.3 s after the load rose (t=2 s); …".
    public var line: String {
        let f = SimulationFormat.seconds
        let totals = "\(self.completed) completed, \(self.rejected) rejected (503)"
        guard self.autoscaled else {
            return "not autoscaled: \(self.minReplicas) replica\(self.minReplicas == 1 ? "" : "s") throughout; \(totals)"
        }
        var parts = ["max \(self.maxRunning) replica\(self.maxRunning == 1 ? "" : "s") running"
            + (self.maxTarget != self.maxRunning ? " (target up to \(self.maxTarget))" : "")]
        if let rose = self.loadIncreaseAt {
            if let after = self.firstScaleUpAfter {
                parts.append("first scale-up \(f(after)) s after the load rose at t=\(f(rose)) s")
            } else {
                parts.append("no scale-up after the load rose at t=\(f(rose)) s")
            }
            if let after = self.maxReachedAfter {
                parts.append("\(self.maxRunning) running \(f(after)) s after it")
            }
        } else {
            parts.append("the load never rises")
        }
        if let stop = self.loadStopAt {
            if let after = self.backToMinAfter {
                parts.append("back to \(self.minReplicas) \(f(after)) s after the load stopped at t=\(f(stop)) s")
            } else {
                parts.append("not back to \(self.minReplicas) by the end (the load stopped at t=\(f(stop)) s)")
            }
        } else {
            parts.append("the load does not stop")
        }
        parts.append(totals)
        return parts.joined(separator: "; ")
    }
}

/// Everything a run produces.
public struct SimulationResult: Sendable, Hashable {
    public var rows: [SimulationRow]
    public var decisions: [SimulationDecision]
    public var summary: SimulationSummary
}

// MARK: - Simulator

/// Replays a `LoadTrace` against one deployment on a virtual clock, driving the real
/// `MetricsWindow` and `AutoscalingPolicy` the way the head's controller does
/// (`Controller.autoscale`): every tick (0.1 s) the router's waiting count is recorded as the
/// source "router", stale sources expire, and `decide` gets the window's aggregate; every 0.5 s
/// each replica reports its ongoing requests (as workers' heartbeats do).
///
/// The model: replicas with `max_ongoing_requests` slots; requests that find no free slot wait
/// in FIFO order at the router, at most `max_queued_requests` of them (beyond: 503, counted as
/// rejected); the router sends each request to the RUNNING replica with the fewest requests
/// (oldest first on ties), a deterministic stand-in for power-of-two choices. A replica the
/// target adds is RUNNING `startup` seconds later; when the target falls, STARTING replicas
/// stop first, then the newest RUNNING ones drain (their requests finish, no new ones come).
/// Request times are exact (integer microseconds), so a run is reproducible to the byte.
public struct AutoscalingSimulator: Sendable {
    public let deployment: DeploymentConfig
    public let trace: LoadTrace
    /// Seconds from a scale-up decision to the new replica RUNNING.
    public let startup: Double
    /// The controller's period (seconds).
    public let tick: Double
    /// How often replicas report their ongoing requests (the workers' heartbeat, 0.5 s).
    public var reportInterval: Double = 0.5
    /// How long a closed-loop client waits after a 503 before sending again.
    public var retryDelay: Double = 0.1

    public init(deployment: DeploymentConfig, trace: LoadTrace, startup: Double, tick: Double = 0.1) {
        self.deployment = deployment
        self.trace = trace
        self.startup = startup.isFinite ? max(startup, 0) : 0
        self.tick = tick.isFinite && tick > 0 ? tick : 0.1
    }

    /// The timeline, one row every `step` seconds (rounded to whole ticks) from 0 to the end.
    public func run(step: Double = 1) -> [SimulationRow] {
        self.simulate(step: step).rows
    }

    /// The timeline, the target changes with the policy's reasons, and the summary.
    public func simulate(step: Double = 1) -> SimulationResult {
        var engine = SimulationEngine(self, step: step)
        return engine.run()
    }
}

/// Microseconds on the virtual clock.
private typealias Micros = Int

private func micros(_ seconds: Double) -> Micros {
    guard seconds.isFinite else { return seconds > 0 ? Micros.max / 4 : 0 }
    return Micros((min(max(seconds, -1e12), 1e12) * 1_000_000).rounded())
}

private func seconds(_ value: Micros) -> Double {
    Double(value) / 1_000_000
}

private struct SimulationEngine {
    struct Replica {
        enum State { case starting, running, draining }
        var serial: Int
        var id: String
        var state: State
        var ongoing = 0
    }

    struct Waiting {
        var arrival: Micros
        var fromClient: Bool
    }

    enum EventKind {
        case completion(serial: Int, arrival: Micros, fromClient: Bool)
        case ready(serial: Int)
        case retry
    }

    struct Event {
        var time: Micros
        var priority: Int
        var sequence: Int
        var kind: EventKind

        func precedes(_ other: Event) -> Bool {
            (self.time, self.priority, self.sequence) < (other.time, other.priority, other.sequence)
        }
    }

    // Order of simultaneous happenings: answers, then replicas becoming ready, then open-loop
    // arrivals, then trace rows, then retries after a 503; the controller's tick comes last.
    static let completionPriority = 0
    static let readyPriority = 1
    static let arrivalPriority = 2
    static let rowPriority = 3
    static let retryPriority = 4

    // Inputs.
    let name: String
    let autoscaling: AutoscalingConfig?
    let maxOngoing: Int
    let maxQueued: Int
    let mode: LoadTrace.Mode
    let rows: [(time: Micros, load: Double, service: Micros)]
    let tickUs: Micros
    let reportTicks: Int
    let stepTicks: Int
    let startupUs: Micros
    let retryUs: Micros
    let endUs: Micros
    let staleAfter: Double
    let minReplicas: Int
    let loadIncreaseAt: Double?
    let loadStopAt: Double?

    // State.
    var now: Micros = 0
    var replicas: [Replica] = []
    var nextSerial = 1
    var queue: [Waiting] = []
    var queueHead = 0
    var heap: [Event] = []
    var sequence = 0
    var target: Int
    var window: MetricsWindow
    var policy = AutoscalingState()
    var rowIndex = -1
    var clientsWanted = 0
    var clientsAlive = 0
    var rate = 0.0
    var credit = 0.0
    var creditAt: Micros = 0
    var nextArrival: Micros?

    // Output.
    var stepCompleted = 0
    var stepRejected = 0
    var stepLatencies: [Micros] = []
    var totalCompleted = 0
    var totalRejected = 0
    var timeline: [SimulationRow] = []
    var decisions: [SimulationDecision] = []
    /// (time, running, target) whenever either changes, at tick resolution.
    var counts: [(time: Double, running: Int, target: Int)] = []

    init(_ simulator: AutoscalingSimulator, step: Double) {
        let deployment = simulator.deployment
        self.name = deployment.name
        self.autoscaling = deployment.autoscaling
        self.maxOngoing = max(deployment.maxOngoingRequests, 1)
        self.maxQueued = deployment.maxQueuedRequests
        self.mode = simulator.trace.mode
        self.rows = simulator.trace.rows.map { (micros($0.time), $0.load, max(micros($0.serviceMs / 1000), 1)) }
        self.tickUs = max(micros(simulator.tick), 1)
        let tick = seconds(self.tickUs)
        self.reportTicks = max(Int((simulator.reportInterval / tick).rounded()), 1)
        self.stepTicks = step.isFinite && step > 0 ? max(Int((step / tick).rounded()), 1) : max(Int((1 / tick).rounded()), 1)
        self.startupUs = max(micros(simulator.startup), 0)
        self.retryUs = max(micros(simulator.retryDelay), 1)
        self.endUs = max(micros(simulator.trace.duration), 0)
        let metricsInterval = deployment.autoscaling?.metricsIntervalS ?? 10
        self.staleAfter = max(2 * metricsInterval, 10, 4 * simulator.reportInterval)
        if let autoscaling = deployment.autoscaling {
            self.minReplicas = max(autoscaling.minReplicas, 0)
        } else {
            self.minReplicas = deployment.initialReplicaCount
        }
        // Only what happens within the run counts (`--duration` may cut the trace short).
        let duration = simulator.trace.duration
        self.loadIncreaseAt = simulator.trace.firstIncrease.flatMap { $0 <= duration ? $0 : nil }
        let stop = LoadTrace(mode: simulator.trace.mode, rows: simulator.trace.rows.filter { $0.time <= duration }).stop
        self.loadStopAt = stop
        self.target = max(deployment.initialReplicaCount, 0)
        self.window = MetricsWindow(lookBack: deployment.autoscaling?.lookBackPeriodS ?? 30)
        // The initial replicas are up when the trace starts, as after `serve deploy` settles.
        for _ in 0..<self.target {
            self.addReplica(state: .running)
        }
    }

    mutating func run() -> SimulationResult {
        var tickIndex = 0
        while true {
            let time = tickIndex * self.tickUs
            if time > self.endUs { break }
            self.advance(to: time)
            self.controllerTick(tickIndex)
            tickIndex += 1
        }
        return SimulationResult(rows: self.timeline, decisions: self.decisions, summary: self.summary())
    }

    // MARK: the controller

    mutating func controllerTick(_ index: Int) {
        let nowS = seconds(self.now)
        if index % self.reportTicks == 0 {
            for replica in self.replicas where replica.state != .starting {
                self.window.record(source: replica.id, value: Double(replica.ongoing), at: nowS)
            }
        }
        if let config = self.autoscaling {
            self.window.record(source: "router", value: Double(self.queuedCount), at: nowS)
            self.window.expire(now: nowS, staleAfter: self.staleAfter)
            let panicOngoing = config.panicWindowS.flatMap {
                self.window.aggregate(now: nowS, aggregation: config.aggregationFunction, over: $0)
            }
            let decision = AutoscalingPolicy.decide(
                config: config,
                currentTarget: self.target,
                running: self.runningCount,
                totalOngoing: self.window.aggregate(now: nowS, aggregation: config.aggregationFunction),
                latestOngoing: self.window.latest(),
                now: nowS,
                state: &self.policy,
                panicOngoing: panicOngoing
            )
            if decision.target != self.target {
                self.decisions.append(SimulationDecision(time: nowS, before: self.target, after: decision.target, reason: decision.reason))
                self.target = decision.target
                self.reconcile()
                // Replicas that start at once serve from this instant.
                self.advance(to: self.now)
            }
        }
        let running = self.runningCount
        if self.counts.last.map({ $0.running != running || $0.target != self.target }) ?? true {
            self.counts.append((nowS, running, self.target))
        }
        if index % self.stepTicks == 0 {
            self.record(at: nowS)
        }
    }

    /// Brings the replicas to the target, as the reconciler does on one node.
    mutating func reconcile() {
        let live = self.replicas.filter { $0.state != .draining }.count
        if self.target > live {
            for _ in 0..<(self.target - live) {
                let serial = self.addReplica(state: .starting)
                self.push(self.now + self.startupUs, Self.readyPriority, .ready(serial: serial))
            }
        } else if self.target < live {
            var surplus = live - self.target
            for state in [Replica.State.starting, .running] {
                for index in self.replicas.indices.reversed() where surplus > 0 && self.replicas[index].state == state {
                    self.replicas[index].state = .draining
                    surplus -= 1
                }
            }
            self.removeDrained()
        }
    }

    @discardableResult
    mutating func addReplica(state: Replica.State) -> Int {
        let serial = self.nextSerial
        self.nextSerial += 1
        self.replicas.append(Replica(serial: serial, id: "\(self.name)#\(serial)", state: state))
        return serial
    }

    /// Stopped replicas with nothing in flight leave (and leave the window).
    mutating func removeDrained() {
        for replica in self.replicas where replica.state == .draining && replica.ongoing == 0 {
            self.window.remove(source: replica.id)
        }
        self.replicas.removeAll { $0.state == .draining && $0.ongoing == 0 }
    }

    var runningCount: Int {
        self.replicas.reduce(0) { $0 + ($1.state == .running ? 1 : 0) }
    }

    var queuedCount: Int {
        self.queue.count - self.queueHead
    }

    mutating func record(at time: Double) {
        let sorted = self.stepLatencies.sorted()
        func percentile(_ p: Double) -> Double? {
            guard !sorted.isEmpty else { return nil }
            let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
            return Double(sorted[min(max(rank, 1), sorted.count) - 1]) / 1000
        }
        self.timeline.append(
            SimulationRow(
                time: time,
                load: self.rowIndex >= 0 ? self.rows[self.rowIndex].load : 0,
                ongoing: self.replicas.reduce(0) { $0 + $1.ongoing },
                queued: self.queuedCount,
                target: self.target,
                running: self.runningCount,
                completed: self.stepCompleted,
                rejected: self.stepRejected,
                p50Ms: percentile(50),
                p99Ms: percentile(99)
            )
        )
        self.stepCompleted = 0
        self.stepRejected = 0
        self.stepLatencies.removeAll(keepingCapacity: true)
    }

    func summary() -> SimulationSummary {
        let maxRunning = self.counts.map(\.running).max() ?? 0
        let maxTarget = self.counts.map(\.target).max() ?? 0
        var firstScaleUp: Double?
        var maxReached: Double?
        if let rose = self.loadIncreaseAt {
            firstScaleUp = self.decisions.first { $0.time >= rose && $0.after > $0.before }.map { $0.time - rose }
            maxReached = self.counts.first { $0.time >= rose && $0.running == maxRunning }.map { $0.time - rose }
        }
        var backToMin: Double?
        if let stop = self.loadStopAt {
            // The state in force at the stop counts too (it may already be at the minimum).
            let atStop = self.counts.last { $0.time <= stop }
            if let atStop, atStop.running == self.minReplicas, atStop.target == self.minReplicas {
                backToMin = 0
            } else {
                backToMin = self.counts.first {
                    $0.time >= stop && $0.running == self.minReplicas && $0.target == self.minReplicas
                }.map { $0.time - stop }
            }
        }
        return SimulationSummary(
            autoscaled: self.autoscaling != nil,
            maxRunning: maxRunning,
            maxTarget: maxTarget,
            minReplicas: self.minReplicas,
            loadIncreaseAt: self.loadIncreaseAt,
            firstScaleUpAfter: firstScaleUp,
            maxReachedAfter: maxReached,
            loadStopAt: self.loadStopAt,
            backToMinAfter: backToMin,
            completed: self.totalCompleted,
            rejected: self.totalRejected
        )
    }

    // MARK: requests

    /// Handles everything that happens up to and including `time`, in order.
    mutating func advance(to time: Micros) {
        while true {
            var best: (time: Micros, priority: Int)?
            func consider(_ candidate: (Micros, Int)?) {
                guard let candidate else { return }
                if best.map({ candidate < ($0.time, $0.priority) }) ?? true { best = candidate }
            }
            consider(self.heap.first.map { ($0.time, $0.priority) })
            consider(self.nextArrival.map { ($0, Self.arrivalPriority) })
            if self.rowIndex + 1 < self.rows.count {
                consider((self.rows[self.rowIndex + 1].time, Self.rowPriority))
            }
            guard let next = best, next.time <= time else { break }
            self.now = max(self.now, next.time)
            if let event = self.heap.first, (event.time, event.priority) == (next.time, next.priority) {
                self.pop()
                self.handle(event.kind)
            } else if next.priority == Self.arrivalPriority {
                self.arrive()
            } else {
                self.nextRow()
            }
        }
        self.now = max(self.now, time)
    }

    mutating func handle(_ kind: EventKind) {
        switch kind {
        case .completion(let serial, let arrival, let fromClient):
            if let index = self.replicas.firstIndex(where: { $0.serial == serial }) {
                self.replicas[index].ongoing -= 1
                if self.replicas[index].state == .draining, self.replicas[index].ongoing == 0 {
                    self.removeDrained()
                }
            }
            self.totalCompleted += 1
            self.stepCompleted += 1
            self.stepLatencies.append(self.now - arrival)
            self.dispatchWaiting()
            if fromClient { self.clientNext() }
        case .ready(let serial):
            if let index = self.replicas.firstIndex(where: { $0.serial == serial }), self.replicas[index].state == .starting {
                self.replicas[index].state = .running
                self.dispatchWaiting()
            }
        case .retry:
            self.clientNext()
        }
    }

    /// The next trace row takes over.
    mutating func nextRow() {
        self.rowIndex += 1
        let row = self.rows[self.rowIndex]
        switch self.mode {
        case .rateRPS:
            self.accrue()
            self.rate = row.load
            self.scheduleArrival()
        case .clients:
            self.clientsWanted = Int(row.load)
            if self.clientsWanted > self.clientsAlive {
                let added = self.clientsWanted - self.clientsAlive
                self.clientsAlive = self.clientsWanted
                for _ in 0..<added { self.submit(fromClient: true) }
            }
            // Fewer clients: the surplus stop as their requests are answered.
        }
    }

    /// Open loop: the arrivals owed since `creditAt`, as a fraction of a request.
    mutating func accrue() {
        self.credit += self.rate * seconds(self.now - self.creditAt)
        self.creditAt = self.now
    }

    mutating func scheduleArrival() {
        guard self.rate > 0 else {
            self.nextArrival = nil
            return
        }
        let wait = max(1 - self.credit, 0) / self.rate * 1_000_000
        self.nextArrival = wait < 1e15 ? self.creditAt + Micros((wait - 1e-6).rounded(.up)) : nil
    }

    mutating func arrive() {
        self.accrue()
        self.credit = max(self.credit - 1, 0)
        self.submit(fromClient: false)
        self.scheduleArrival()
    }

    /// A closed-loop client's request was answered (or its back-off ended): it sends the next
    /// one, unless the trace has fewer clients now.
    mutating func clientNext() {
        if self.clientsAlive > self.clientsWanted {
            self.clientsAlive -= 1
        } else {
            self.submit(fromClient: true)
        }
    }

    /// A request reaches the router: a free slot, else the queue, else 503.
    mutating func submit(fromClient: Bool) {
        if self.queuedCount == 0, let index = self.pick() {
            self.start(on: index, arrival: self.now, fromClient: fromClient)
        } else if self.maxQueued >= 0, self.queuedCount >= self.maxQueued {
            self.totalRejected += 1
            self.stepRejected += 1
            if fromClient { self.push(self.now + self.retryUs, Self.retryPriority, .retry) }
        } else {
            self.queue.append(Waiting(arrival: self.now, fromClient: fromClient))
        }
    }

    mutating func dispatchWaiting() {
        while self.queuedCount > 0, let index = self.pick() {
            let waiting = self.queue[self.queueHead]
            self.queueHead += 1
            self.start(on: index, arrival: waiting.arrival, fromClient: waiting.fromClient)
        }
        if self.queueHead > 1024, self.queueHead * 2 > self.queue.count {
            self.queue.removeFirst(self.queueHead)
            self.queueHead = 0
        }
    }

    /// The RUNNING replica with a free slot and the fewest requests, the oldest on ties.
    func pick() -> Int? {
        var best: Int?
        for index in self.replicas.indices {
            let replica = self.replicas[index]
            guard replica.state == .running, replica.ongoing < self.maxOngoing else { continue }
            if best.map({ replica.ongoing < self.replicas[$0].ongoing }) ?? true { best = index }
        }
        return best
    }

    mutating func start(on index: Int, arrival: Micros, fromClient: Bool) {
        self.replicas[index].ongoing += 1
        let service = self.rowIndex >= 0 ? self.rows[self.rowIndex].service : (self.rows.first?.service ?? 1)
        self.push(
            self.now + service,
            Self.completionPriority,
            .completion(serial: self.replicas[index].serial, arrival: arrival, fromClient: fromClient)
        )
    }

    // MARK: the event heap (a binary min-heap on time, priority, sequence)

    mutating func push(_ time: Micros, _ priority: Int, _ kind: EventKind) {
        self.sequence += 1
        self.heap.append(Event(time: time, priority: priority, sequence: self.sequence, kind: kind))
        var child = self.heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard self.heap[child].precedes(self.heap[parent]) else { break }
            self.heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() {
        let last = self.heap.count - 1
        self.heap.swapAt(0, last)
        self.heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < self.heap.count, self.heap[left].precedes(self.heap[smallest]) { smallest = left }
            if right < self.heap.count, self.heap[right].precedes(self.heap[smallest]) { smallest = right }
            guard smallest != parent else { break }
            self.heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

// MARK: - Output

/// Number formatting without Foundation.
public enum SimulationFormat {
    /// Fixed decimals: `fixed(2.345, 1)` is "2.3"; -0 prints as "0".
    public static func fixed(_ value: Double, _ decimals: Int) -> String {
        guard value.isFinite else { return "\(value)" }
        let decimals = min(max(decimals, 0), 9)
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (value.magnitude * scale).rounded()
        guard scaled < 9e15 else { return "\(value)" }
        let whole = Int(scaled)
        let sign = value < 0 && whole != 0 ? "-" : ""
        guard decimals > 0 else { return sign + String(whole) }
        let unit = Int(scale)
        var fraction = String(whole % unit)
        while fraction.count < decimals { fraction = "0" + fraction }
        return "\(sign)\(whole / unit).\(fraction)"
    }

    /// Seconds with at most one decimal, no trailing ".0": "3.3", "5".
    public static func seconds(_ value: Double) -> String {
        let text = Self.fixed(value, 1)
        return text.hasSuffix(".0") ? String(text.dropLast(2)) : text
    }

    /// Shortest form for JSON: whole numbers without a fraction, others as Swift prints them.
    static func json(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "null" }
        if value == value.rounded(), value.magnitude < 1e15 { return String(Int(value)) }
        return "\(value)"
    }
}

/// The text forms of a run: the aligned table and the rows as JSON (`serve simulate` draws the
/// chart, with `ServePlot`).
public enum SimulationReport {
    /// An aligned table with a header; the load column is named after the trace's form.
    public static func table(_ rows: [SimulationRow], mode: LoadTrace.Mode) -> String {
        let header = ["time_s", mode.rawValue, "ongoing", "queued", "target", "running", "completed", "rejected", "p50_ms", "p99_ms"]
        var cells: [[String]] = [header]
        for row in rows {
            cells.append([
                SimulationFormat.fixed(row.time, 1),
                mode == .clients ? SimulationFormat.fixed(row.load, 0) : SimulationFormat.seconds(row.load),
                String(row.ongoing),
                String(row.queued),
                String(row.target),
                String(row.running),
                String(row.completed),
                String(row.rejected),
                row.p50Ms.map { SimulationFormat.fixed($0, 1) } ?? "-",
                row.p99Ms.map { SimulationFormat.fixed($0, 1) } ?? "-",
            ])
        }
        var widths = [Int](repeating: 0, count: header.count)
        for line in cells {
            for (column, cell) in line.enumerated() { widths[column] = max(widths[column], cell.count) }
        }
        return cells.map { line in
            line.enumerated().map { column, cell in
                String(repeating: " ", count: widths[column] - cell.count) + cell
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    /// The rows as a JSON array, one object per line, keys in table order.
    public static func json(_ rows: [SimulationRow], mode: LoadTrace.Mode) -> String {
        let lines = rows.map { row in
            "{\"time_s\": \(SimulationFormat.json(row.time)), \"\(mode.rawValue)\": \(SimulationFormat.json(row.load)), "
                + "\"ongoing\": \(row.ongoing), \"queued\": \(row.queued), \"target\": \(row.target), "
                + "\"running\": \(row.running), \"completed\": \(row.completed), \"rejected\": \(row.rejected), "
                + "\"p50_ms\": \(SimulationFormat.json(row.p50Ms)), \"p99_ms\": \(SimulationFormat.json(row.p99Ms))}"
        }
        return lines.isEmpty ? "[]" : "[\n  " + lines.joined(separator: ",\n  ") + "\n]"
    }
}
