/// What the autoscaling policy remembers between decisions: the change it is waiting to make,
/// in which direction, away from which target, and since when. A fresh value (after a head
/// restart, or a new deployment) has no history, so the delays count from the first call.
public struct AutoscalingState: Sendable, Hashable {
    public enum Direction: String, Sendable, Hashable {
        case up
        case down
    }

    /// A proposed change that has not yet waited out its delay.
    public struct Pending: Sendable, Hashable {
        public var direction: Direction
        /// When the first consecutive proposal in this direction was made (seconds).
        public var since: Double
        /// The target the change moves away from; a different current target starts over.
        public var from: Int

        public init(direction: Direction, since: Double, from: Int) {
            self.direction = direction
            self.since = since
            self.from = from
        }
    }

    /// The pending change, nil when the last decision was "stay".
    public internal(set) var pending: Pending?
    /// Panic mode (opt-in, `panic_window_s` and `panic_threshold`): when the current panic
    /// started, nil when not panicking.
    public internal(set) var panicSince: Double?
    /// The last decision time at which the panic condition held; panic ends a whole
    /// `look_back_period_s` after it.
    public internal(set) var panicLastTriggered: Double?

    public init() {}
}

/// One decision of `AutoscalingPolicy.decide`.
public struct AutoscalingDecision: Sendable, Hashable {
    /// The new target replica count (may equal the current one).
    public var target: Int
    /// Why, readably: the metric, the desired count, factors and bounds, and the delay.
    public var reason: String
    /// Set when the target left 0 through the cold-start path (no delay).
    public var coldStart: Bool

    public init(target: Int, reason: String, coldStart: Bool = false) {
        self.target = target
        self.reason = reason
        self.coldStart = coldStart
    }
}

/// The application autoscaler's decision, Ray Serve's current default policy (PEERS.md §1):
/// `_core_replica_queue_length_policy` (desired = total ongoing / target per replica),
/// `_apply_scaling_factors` (a gain on the step away from the running count, rounded up, with a
/// forced −1 so a downscale always progresses), the bounds, and `_apply_delay_logic` measured in
/// wall time (PR #62144), with the cold-start fast path and the two-stage 1 → 0 rule. Pure: time
/// is an input, in seconds since any origin.
public enum AutoscalingPolicy {
    /// Values within this of an integer count as that integer when rounding up, and a delay
    /// this short of its end counts as elapsed: decimal ticks (0.1 s) and ratios such as
    /// 0.3 / 0.1 are not exact in binary.
    static let tolerance = 1e-9

    /// One decision. `currentTarget` is the controller's current target; `running` the RUNNING
    /// replicas (the factors apply to the running count, Ray's rule); `totalOngoing` the window
    /// aggregate (nil = no data: keep the target); `latestOngoing` the newest summed value (for
    /// the cold start); `now` in seconds. `panicOngoing` is the same aggregate over the panic
    /// window (`panic_window_s`), used only when panic mode is configured (Knative's KPA,
    /// PEERS.md §7): when the count it wants reaches `panic_threshold` × max(running, 1) the
    /// target rises to it at once, and it never falls until the condition has been false for a
    /// whole `look_back_period_s`.
    public static func decide(
        config: AutoscalingConfig,
        currentTarget: Int,
        running: Int,
        totalOngoing: Double?,
        latestOngoing: Double,
        now: Double,
        state: inout AutoscalingState,
        panicOngoing: Double? = nil
    ) -> AutoscalingDecision {
        let bounds = Bounds(config)
        if let decision = Self.coldStart(
            config: config, bounds: bounds, currentTarget: currentTarget, latestOngoing: latestOngoing)
        {
            state.pending = nil
            return decision
        }
        guard let total = totalOngoing, total.isFinite else {
            state.pending = nil
            return AutoscalingDecision(target: currentTarget, reason: "no metrics in the window: keeping \(currentTarget)")
        }
        let perReplica = config.targetOngoingRequests
        guard perReplica.isFinite, perReplica > 0 else {
            state.pending = nil
            return AutoscalingDecision(
                target: currentTarget,
                reason: "target_ongoing_requests \(Self.format(perReplica)) is not positive: keeping \(currentTarget)"
            )
        }
        var why = ""
        if let threshold = config.panicThreshold, let window = config.panicWindowS {
            switch Self.panic(
                config: config, threshold: threshold, window: window, perReplica: perReplica, upper: bounds.upper,
                currentTarget: currentTarget, running: running, panicOngoing: panicOngoing, now: now, state: &state
            ) {
            case .panicking(let decision): return decision
            case .ended(let reason): why = reason
            case .calm: break
            }
        }
        if state.panicSince != nil || state.panicLastTriggered != nil {
            // Panic ended, or panic mode was switched off.
            state.panicSince = nil
            state.panicLastTriggered = nil
        }
        let desired = max(total, 0) / perReplica
        why += "ongoing \(Self.format(max(total, 0))) / target \(Self.format(perReplica)) per replica"
            + " → desired \(Self.format(desired))"
        var proposal = Self.applyFactors(
            config: config, desired: desired, running: running, currentTarget: currentTarget, why: &why)
        proposal = Self.applyBounds(proposal, bounds, currentTarget: currentTarget, why: &why)
        return Self.applyDelay(
            config: config, proposal: proposal, currentTarget: currentTarget, now: now, state: &state, why: why)
    }

    /// `[min_replicas, max_replicas]`, a negative minimum read as 0 and a maximum below the
    /// minimum as the minimum.
    struct Bounds {
        var lower: Int
        var upper: Int

        init(_ config: AutoscalingConfig) {
            self.lower = max(config.minReplicas, 0)
            self.upper = max(config.maxReplicas, self.lower)
        }
    }

    /// Cold start: requests wait and nothing is targeted; the delay is skipped (Ray's
    /// `_get_cold_start_scale_up_replicas`). Nil when it does not apply.
    private static func coldStart(
        config: AutoscalingConfig,
        bounds: Bounds,
        currentTarget: Int,
        latestOngoing: Double
    ) -> AutoscalingDecision? {
        guard currentTarget <= 0, latestOngoing.isFinite, latestOngoing > 0 else { return nil }
        let step = max(Self.roundUp(config.effectiveUpscalingFactor), 1)
        let target = max(min(max(step, bounds.lower), bounds.upper), 1)
        return AutoscalingDecision(
            target: target,
            reason: "cold start: \(Self.format(latestOngoing)) request(s) waiting with no replica targeted "
                + "→ \(target) now, no delay",
            coldStart: true
        )
    }

    /// The scaling factors, applied to the running count (the current target while none runs):
    /// a gain on the step away from it, rounded up, and a forced −1 so a downscale progresses.
    private static func applyFactors(
        config: AutoscalingConfig,
        desired: Double,
        running: Int,
        currentTarget: Int,
        why: inout String
    ) -> Int {
        let base = running > 0 ? running : max(currentTarget, 0)
        guard base > 0 else { return Self.roundUp(desired) }
        let delta = desired - Double(base)
        let factor = delta > 0 ? config.effectiveUpscalingFactor : config.effectiveDownscalingFactor
        var proposal = Self.roundUp(Double(base) + factor * delta)
        let from = running > 0 ? "\(base) running" : "target \(base) (none running)"
        if factor != 1 {
            why += "; from \(from), \(delta > 0 ? "upscaling" : "downscaling") factor \(Self.format(factor)) → \(proposal)"
        } else if running == 0 {
            why += "; from \(from) → \(proposal)"
        }
        if delta < 0, Self.roundUp(desired) < base, proposal >= base {
            proposal = base - 1
            why += "; −1 so the downscale makes progress → \(proposal)"
        }
        return proposal
    }

    /// The bounds, then the two-stage rule: only 1 → 0 may reach zero.
    private static func applyBounds(_ proposal: Int, _ bounds: Bounds, currentTarget: Int, why: inout String) -> Int {
        var proposal = proposal
        let clamped = min(max(proposal, bounds.lower), bounds.upper)
        if clamped != proposal {
            why += "; bounds [\(bounds.lower), \(bounds.upper)] → \(clamped)"
            proposal = clamped
        }
        if proposal < 1, currentTarget > 1 {
            proposal = 1
            why += "; → 1 first (reaching 0 takes two steps)"
        }
        return proposal
    }

    /// The delays, in wall time, against the current target: a change is made once the same
    /// change (direction and starting target) has been proposed for its whole delay.
    private static func applyDelay(
        config: AutoscalingConfig,
        proposal: Int,
        currentTarget: Int,
        now: Double,
        state: inout AutoscalingState,
        why: String
    ) -> AutoscalingDecision {
        guard proposal != currentTarget else {
            state.pending = nil
            return AutoscalingDecision(target: currentTarget, reason: why + "; steady at \(currentTarget)")
        }
        let direction: AutoscalingState.Direction = proposal > currentTarget ? .up : .down
        let (delay, delayName) = Self.delay(config: config, direction: direction, toZero: proposal == 0)
        if let pending = state.pending, pending.direction == direction, pending.from == currentTarget, pending.since <= now {
            // The same change is still wanted: keep its start.
        } else {
            state.pending = AutoscalingState.Pending(direction: direction, since: now, from: currentTarget)
        }
        let waited = now - (state.pending?.since ?? now)
        let move = "\(delayName) \(currentTarget) → \(proposal)"
        if waited + Self.tolerance >= delay {
            state.pending = nil
            return AutoscalingDecision(target: proposal, reason: why + "; \(move) after \(Self.format(waited)) s")
        }
        return AutoscalingDecision(
            target: currentTarget,
            reason: why + "; \(move) held \(Self.format(waited)) s of \(Self.format(delay)) s"
        )
    }

    /// The delay a change in `direction` waits out, and its name in reasons.
    private static func delay(
        config: AutoscalingConfig,
        direction: AutoscalingState.Direction,
        toZero: Bool
    ) -> (seconds: Double, name: String) {
        switch direction {
        case .up:
            (config.upscaleDelayS, "upscale")
        case .down where toZero && config.downscaleToZeroDelayS != nil:
            (config.downscaleToZeroDelayS ?? config.downscaleDelayS, "downscale to zero")
        case .down:
            (config.downscaleDelayS, "downscale")
        }
    }

    /// Panic mode's part of a decision.
    private enum PanicOutcome {
        /// Not panicking, and not just ended: the normal decision follows.
        case calm
        /// Panic just ended: the normal decision follows, its reason starting with this.
        case ended(String)
        /// Panicking: this decision, which skips the delays and never lowers the target.
        case panicking(AutoscalingDecision)
    }

    /// Panic mode's part of a decision (`panic_threshold` and `panic_window_s` set).
    private static func panic(
        config: AutoscalingConfig,
        threshold: Double,
        window: Double,
        perReplica: Double,
        upper: Int,
        currentTarget: Int,
        running: Int,
        panicOngoing: Double?,
        now: Double,
        state: inout AutoscalingState
    ) -> PanicOutcome {
        let capacity = max(running, 1)
        var desired: Int?
        var triggered = false
        if let ongoing = panicOngoing, ongoing.isFinite {
            let wanted = Self.roundUp(max(ongoing, 0) / perReplica)
            desired = wanted
            triggered = Double(wanted) + Self.tolerance >= threshold * Double(capacity)
        }
        if triggered {
            if state.panicSince == nil || state.panicLastTriggered == nil {
                state.panicSince = now
            }
            state.panicLastTriggered = now
        } else if let last = state.panicLastTriggered, state.panicSince != nil,
            now - last + Self.tolerance >= config.lookBackPeriodS
        {
            return .ended("panic ended (calm for \(Self.format(now - last)) s); ")
        }
        guard let since = state.panicSince, state.panicLastTriggered != nil else { return .calm }

        // Panicking: the normal delays restart once it ends.
        state.pending = nil
        let proposal = min(desired ?? 0, upper)
        let target = max(currentTarget, proposal)
        var why = "panic: "
        if let ongoing = panicOngoing, let desired {
            why += "ongoing \(Self.format(max(ongoing, 0))) over the \(Self.format(window)) s panic window"
                + " / target \(Self.format(perReplica)) per replica → desired \(desired)"
                + (triggered ? " ≥ " : " < ")
                + "threshold \(Self.format(threshold)) × \(capacity) running"
        } else {
            why += "no metrics in the panic window"
        }
        if let desired, desired > upper {
            why += "; bounds max \(upper) → \(proposal)"
        }
        if triggered, now == since {
            why += "; panic started"
        } else {
            why += "; panicking since \(Self.format(since)) s"
            if !triggered, let last = state.panicLastTriggered {
                why += ", calm for \(Self.format(now - last)) s of \(Self.format(config.lookBackPeriodS)) s"
            }
        }
        if target > currentTarget {
            why += "; upscale \(currentTarget) → \(target) now, no delay"
        } else if proposal < currentTarget {
            why += "; holding \(currentTarget), no downscale while panicking"
        } else {
            why += "; steady at \(currentTarget)"
        }
        return .panicking(AutoscalingDecision(target: target, reason: why))
    }

    /// `ceil`, forgiving binary rounding just above an integer, saturating instead of trapping.
    static func roundUp(_ value: Double) -> Int {
        guard !value.isNaN else { return 0 }
        let rounded = (value - Self.tolerance).rounded(.up)
        if rounded >= 1e15 { return 1_000_000_000_000_000 }
        if rounded <= -1e15 { return -1_000_000_000_000_000 }
        return Int(rounded)
    }

    /// At most two decimals, no trailing zeros: "7.5", "4", "0.33".
    static func format(_ value: Double) -> String {
        guard value.isFinite else { return "\(value)" }
        let rounded = (value * 100).rounded() / 100
        if rounded == rounded.rounded(), rounded.magnitude < 1e15 {
            return String(Int(rounded))
        }
        return "\(rounded)"
    }
}
