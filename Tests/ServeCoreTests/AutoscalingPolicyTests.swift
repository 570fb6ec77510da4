import Testing

@testable import ServeCore

@Suite("Autoscaling policy")
struct AutoscalingPolicyTests {
    /// A config with no delays unless given, so the formula tests see the proposal directly.
    func config(
        min: Int = 1,
        max: Int = 100,
        target: Double = 2,
        upscaleDelay: Double = 0,
        downscaleDelay: Double = 0,
        toZeroDelay: Double? = nil,
        smoothing: Double = 1,
        upscaling: Double? = nil,
        downscaling: Double? = nil
    ) -> AutoscalingConfig {
        AutoscalingConfig(
            minReplicas: min,
            maxReplicas: max,
            targetOngoingRequests: target,
            upscaleDelayS: upscaleDelay,
            downscaleDelayS: downscaleDelay,
            downscaleToZeroDelayS: toZeroDelay,
            smoothingFactor: smoothing,
            upscalingFactor: upscaling,
            downscalingFactor: downscaling
        )
    }

    /// One decision with a fresh state, the current target equal to the running count.
    func once(_ config: AutoscalingConfig, running: Int, ongoing: Double) -> AutoscalingDecision {
        var state = AutoscalingState()
        return AutoscalingPolicy.decide(
            config: config, currentTarget: running, running: running,
            totalOngoing: ongoing, latestOngoing: ongoing, now: 0, state: &state
        )
    }

    /// Seconds of tick `index` of 0.1 s, computed without accumulating error.
    func tick(_ index: Int) -> Double {
        Double(index) / 10
    }

    // MARK: the formula

    @Test("target_ongoing_requests: 8 ongoing at 2 per replica wants 4 replicas")
    func targetOngoing() {
        let decision = self.once(self.config(target: 2), running: 2, ongoing: 8)
        #expect(decision.target == 4)
        #expect(!decision.coldStart)
        #expect(decision.reason.contains("ongoing 8 / target 2 per replica → desired 4"))
        #expect(self.once(self.config(target: 2), running: 4, ongoing: 8).target == 4)
        #expect(self.once(self.config(target: 0.5), running: 1, ongoing: 3).target == 6)
        // Fractions round up: 7 / 2 = 3.5 → 4.
        #expect(self.once(self.config(target: 2), running: 1, ongoing: 7).target == 4)
        // Ratios that are not exact in binary: 0.3 / 0.1 is 2.9999999999999996, and wants 3.
        #expect(self.once(self.config(target: 0.1), running: 3, ongoing: 0.3).target == 3)
    }

    @Test("smoothing_factor is the gain on the step; 0.5 moves half way, rounded up")
    func smoothingFactor() {
        // From 2 towards 10: 2 + 0.5 × 8 = 6.
        #expect(self.once(self.config(smoothing: 0.5), running: 2, ongoing: 20).target == 6)
        // From 3 towards 4: 3.5 → 4.
        #expect(self.once(self.config(smoothing: 0.5), running: 3, ongoing: 8).target == 4)
        // From 10 towards 2: 10 − 4 = 6.
        #expect(self.once(self.config(smoothing: 0.5), running: 10, ongoing: 4).target == 6)
        // A gain above 1 overshoots: 2 + 2 × 2 = 6.
        #expect(self.once(self.config(smoothing: 2), running: 2, ongoing: 8).target == 6)
    }

    @Test("upscaling_factor and downscaling_factor override smoothing_factor per direction")
    func directionalFactors() {
        let config = self.config(smoothing: 1, upscaling: 0.5, downscaling: 0.25)
        // Up, half way: 2 + 0.5 × 8 = 6.
        #expect(self.once(config, running: 2, ongoing: 20).target == 6)
        // Down, a quarter: 10 − 0.25 × 8 = 8.
        #expect(self.once(config, running: 10, ongoing: 4).target == 8)
        // Rounding up: 10 − 0.25 × 6 = 8.5 → 9.
        #expect(self.once(config, running: 10, ongoing: 8).target == 9)
        let decision = self.once(config, running: 2, ongoing: 20)
        #expect(decision.reason.contains("upscaling factor 0.5 → 6"))
    }

    @Test("the factors apply to the running count, compared against the current target")
    func factorsOnRunning() {
        var state = AutoscalingState()
        // Target 6, only 2 running yet, 16 ongoing: desired 8; 2 + 0.5 × 6 = 5 < 6 → a downscale.
        let decision = AutoscalingPolicy.decide(
            config: self.config(upscaling: 0.5), currentTarget: 6, running: 2,
            totalOngoing: 16, latestOngoing: 16, now: 0, state: &state
        )
        #expect(decision.target == 5)
    }

    @Test("with no replica running, the current target is the base")
    func noneRunning() {
        var state = AutoscalingState()
        let decision = AutoscalingPolicy.decide(
            config: self.config(upscaling: 0.5), currentTarget: 2, running: 0,
            totalOngoing: 20, latestOngoing: 20, now: 0, state: &state
        )
        // 2 + 0.5 × (10 − 2) = 6.
        #expect(decision.target == 6)
        #expect(decision.reason.contains("none running"))
    }

    @Test("min_replicas and max_replicas clamp the result")
    func bounds() {
        let config = self.config(min: 3, max: 10)
        #expect(self.once(config, running: 5, ongoing: 1000).target == 10)
        #expect(self.once(config, running: 5, ongoing: 0).target == 3)
        #expect(self.once(config, running: 5, ongoing: 10).target == 5)
        #expect(self.once(config, running: 5, ongoing: 1000).reason.contains("bounds [3, 10] → 10"))
        // Huge loads saturate instead of trapping.
        #expect(self.once(config, running: 5, ongoing: 1e300).target == 10)
        // A target below the minimum (a changed config) is raised to it.
        var state = AutoscalingState()
        let raised = AutoscalingPolicy.decide(
            config: config, currentTarget: 1, running: 1, totalOngoing: 0, latestOngoing: 0, now: 0, state: &state
        )
        #expect(raised.target == 3)
    }

    @Test("a downscale always makes progress, even when the factor rounds back to the current count")
    func downscaleProgress() {
        let config = self.config(min: 1, max: 100, downscaling: 0.1)
        // 10 − 0.1 × 1 = 9.9 → 10, but ceil(9) < 10: one less.
        let decision = self.once(config, running: 10, ongoing: 18)
        #expect(decision.target == 9)
        #expect(decision.reason.contains("makes progress"))
        // ceil(9.5) = 10 is not below 10: nothing to do.
        #expect(self.once(config, running: 10, ongoing: 19).target == 10)
        // Repeated decisions reach the desired count.
        var current = 10
        var state = AutoscalingState()
        for step in 0..<20 {
            current = AutoscalingPolicy.decide(
                config: config, currentTarget: current, running: current,
                totalOngoing: 4, latestOngoing: 4, now: Double(step), state: &state
            ).target
        }
        #expect(current == 2)
    }

    // MARK: delays

    @Test("upscale_delay_s: the change lands exactly at start + delay, not a tick before")
    func upscaleDelayExact() {
        let config = self.config(upscaleDelay: 30, downscaleDelay: 600)
        var state = AutoscalingState()
        var target = 1
        var changedAt: Int?
        for index in 100...500 {
            let decision = AutoscalingPolicy.decide(
                config: config, currentTarget: target, running: target,
                totalOngoing: 8, latestOngoing: 8, now: self.tick(index), state: &state
            )
            if decision.target != target, changedAt == nil {
                changedAt = index
                #expect(decision.reason.contains("upscale 1 → 4 after 30 s"))
            }
            if index == 399 {
                #expect(decision.reason.contains("upscale 1 → 4 held 29.9 s of 30 s"))
            }
            target = decision.target
        }
        #expect(changedAt == 400)
        #expect(target == 4)
    }

    @Test("downscale_delay_s: the change lands exactly at start + delay")
    func downscaleDelayExact() {
        let config = self.config(upscaleDelay: 30, downscaleDelay: 600)
        var state = AutoscalingState()
        var target = 8
        var changedAt: Int?
        for index in 13...6_200 {
            let decision = AutoscalingPolicy.decide(
                config: config, currentTarget: target, running: target,
                totalOngoing: 4, latestOngoing: 4, now: self.tick(index), state: &state
            )
            if decision.target != target, changedAt == nil { changedAt = index }
            target = decision.target
        }
        #expect(changedAt == 6_013)
        #expect(target == 2)
    }

    @Test("a change of direction, or a steady proposal, restarts the timer")
    func directionChangeResets() {
        let config = self.config(upscaleDelay: 30, downscaleDelay: 30)
        var state = AutoscalingState()
        var target = 4
        func step(_ index: Int, ongoing: Double) -> Int {
            target = AutoscalingPolicy.decide(
                config: config, currentTarget: target, running: target,
                totalOngoing: ongoing, latestOngoing: ongoing, now: self.tick(index), state: &state
            ).target
            return target
        }
        for index in 0..<200 { #expect(step(index, ongoing: 16) == 4) }  // up, 20 s
        #expect(step(200, ongoing: 2) == 4)  // one tick down: the up timer is gone
        #expect(state.pending?.direction == .down)
        for index in 201..<500 { #expect(step(index, ongoing: 16) == 4) }  // up again from 20.1 s
        #expect(step(501, ongoing: 16) == 8)  // 50.1 s = 20.1 + 30
        // Steady for one tick, then up again: the timer restarts from there.
        for index in 502..<600 { _ = step(index, ongoing: 30) }  // up from 50.2 s
        #expect(step(600, ongoing: 16) == 8)
        #expect(state.pending == nil)
        for index in 601..<900 { #expect(step(index, ongoing: 30) == 8) }
        #expect(step(901, ongoing: 30) == 15)
    }

    @Test("a fresh state (head restart) counts the delay from its first call")
    func freshStateAfterRestart() {
        let config = self.config(upscaleDelay: 30)
        var state = AutoscalingState()
        let first = AutoscalingPolicy.decide(
            config: config, currentTarget: 2, running: 2, totalOngoing: 20, latestOngoing: 20, now: 5_000, state: &state
        )
        #expect(first.target == 2)
        #expect(state.pending == AutoscalingState.Pending(direction: .up, since: 5_000, from: 2))
        let later = AutoscalingPolicy.decide(
            config: config, currentTarget: 2, running: 2, totalOngoing: 20, latestOngoing: 20, now: 5_030, state: &state
        )
        #expect(later.target == 10)
        #expect(state.pending == nil)
    }

    @Test("a pending change made from another target starts over")
    func pendingFromAnotherTarget() {
        let config = self.config(upscaleDelay: 30)
        var state = AutoscalingState()
        _ = AutoscalingPolicy.decide(
            config: config, currentTarget: 2, running: 2, totalOngoing: 20, latestOngoing: 20, now: 0, state: &state
        )
        // The controller moved the target to 3 by other means (a config change).
        let decision = AutoscalingPolicy.decide(
            config: config, currentTarget: 3, running: 3, totalOngoing: 20, latestOngoing: 20, now: 30, state: &state
        )
        #expect(decision.target == 3)
        #expect(state.pending?.since == 30)
    }

    @Test("without metrics the target is kept and nothing stays pending")
    func noMetrics() {
        let config = self.config(upscaleDelay: 30)
        var state = AutoscalingState()
        _ = AutoscalingPolicy.decide(
            config: config, currentTarget: 2, running: 2, totalOngoing: 20, latestOngoing: 20, now: 0, state: &state
        )
        let decision = AutoscalingPolicy.decide(
            config: config, currentTarget: 2, running: 2, totalOngoing: nil, latestOngoing: 0, now: 10, state: &state
        )
        #expect(decision.target == 2)
        #expect(state.pending == nil)
        #expect(decision.reason.contains("no metrics"))
    }

    // MARK: noisy load

    /// Drives the policy through a metrics window for 10,000 ticks of 0.1 s, every running
    /// replica reporting its share of `level` jittered by ±20 %; returns the target after each tick.
    func simulateNoisyLoad(level: Double, config: AutoscalingConfig, seed: UInt64, correlated: Bool) -> [Int] {
        var generator = SeededGenerator(seed: seed)
        var window = MetricsWindow(lookBack: config.lookBackPeriodS)
        var state = AutoscalingState()
        var target = config.initialReplicaCount
        var history: [Int] = []
        history.reserveCapacity(10_000)
        for index in 0..<10_000 {
            let now = self.tick(index)
            let common = Double.random(in: 0.8...1.2, using: &generator)
            for replica in 0..<target {
                let jitter = correlated ? common : Double.random(in: 0.8...1.2, using: &generator)
                window.record(source: "r\(replica)", value: level / Double(target) * jitter, at: now)
            }
            for replica in target..<config.maxReplicas {
                window.remove(source: "r\(replica)")
            }
            window.expire(now: now, staleAfter: MetricsWindow.defaultStaleAfter(metricsIntervalS: config.metricsIntervalS))
            target = AutoscalingPolicy.decide(
                config: config, currentTarget: target, running: target,
                totalOngoing: window.aggregate(now: now, aggregation: config.aggregationFunction),
                latestOngoing: window.latest(), now: now, state: &state
            ).target
            history.append(target)
        }
        return history
    }

    @Test(
        "steady noisy load (±20 %) settles once and never flaps",
        arguments: [(30.0, false), (30.0, true), (3.0, true)]
    )
    func noisyLoadNeverFlaps(lookBack: Double, correlated: Bool) {
        var config = AutoscalingConfig(minReplicas: 1, maxReplicas: 10, targetOngoingRequests: 2)
        config.lookBackPeriodS = lookBack
        // 9 ongoing at 2 per replica: desired 4.5, so 5 replicas; instantaneous samples range
        // over 3.6…5.4, which alone would round to 4, 5 or 6.
        let history = self.simulateNoisyLoad(level: 9, config: config, seed: 20_240_607, correlated: correlated)
        let settled = history[400...]
        #expect(settled.allSatisfy { $0 == 5 }, "targets after settling: \(Set(settled))")
        var changes = 0
        for index in 1..<history.count where history[index] != history[index - 1] { changes += 1 }
        #expect(changes == 1)
    }

    @Test("the same noise with no window and no delays does flap (the test above has teeth)")
    func noiseWithoutDampingFlaps() {
        var config = self.config(min: 1, max: 10, target: 2)
        config.lookBackPeriodS = 0
        let history = self.simulateNoisyLoad(level: 9, config: config, seed: 20_240_607, correlated: true)
        var changes = 0
        for index in 1..<history.count where history[index] != history[index - 1] { changes += 1 }
        #expect(changes > 100)
    }

    // MARK: scale to and from zero

    @Test("cold start: requests waiting with target 0 start replicas at once")
    func coldStartSkipsDelay() {
        let config = self.config(min: 0, max: 10, upscaleDelay: 30)
        var state = AutoscalingState()
        let decision = AutoscalingPolicy.decide(
            config: config, currentTarget: 0, running: 0, totalOngoing: 0.1, latestOngoing: 3, now: 0, state: &state
        )
        #expect(decision.target == 1)
        #expect(decision.coldStart)
        #expect(decision.reason.contains("cold start"))
        #expect(state.pending == nil)
        // The upscaling factor sizes the first step: ceil(1 × 2.5) = 3, within the bounds.
        var other = AutoscalingState()
        let factored = AutoscalingPolicy.decide(
            config: self.config(min: 0, max: 2, upscaling: 2.5), currentTarget: 0, running: 0,
            totalOngoing: nil, latestOngoing: 1, now: 0, state: &other
        )
        #expect(factored.target == 2)
        // A factor below 1 still starts one replica.
        let small = AutoscalingPolicy.decide(
            config: self.config(min: 0, max: 10, upscaling: 0.2), currentTarget: 0, running: 0,
            totalOngoing: nil, latestOngoing: 1, now: 0, state: &other
        )
        #expect(small.target == 1)
        // Nothing waiting now: no cold start, nothing to do.
        let idle = AutoscalingPolicy.decide(
            config: config, currentTarget: 0, running: 0, totalOngoing: 0, latestOngoing: 0, now: 0, state: &other
        )
        #expect(idle.target == 0)
        #expect(!idle.coldStart)
    }

    @Test("1 → 0 takes two steps and honours downscale_to_zero_delay_s")
    func scaleToZeroInTwoSteps() {
        let config = self.config(min: 0, max: 10, downscaleDelay: 10, toZeroDelay: 100)
        var state = AutoscalingState()
        var target = 3
        var history: [(index: Int, target: Int)] = []
        for index in 0...1_200 {
            let decision = AutoscalingPolicy.decide(
                config: config, currentTarget: target, running: target,
                totalOngoing: 0, latestOngoing: 0, now: self.tick(index), state: &state
            )
            if decision.target != target {
                history.append((index, decision.target))
                #expect(!decision.coldStart)
            }
            target = decision.target
        }
        // 3 → 1 after 10 s (not 0), then 1 → 0 100 s after that step began (10.1 s).
        #expect(history.map(\.target) == [1, 0])
        #expect(history.map(\.index) == [100, 1_101])
    }

    @Test("without downscale_to_zero_delay_s the last step waits downscale_delay_s")
    func scaleToZeroDefaultDelay() {
        let config = self.config(min: 0, max: 10, downscaleDelay: 10)
        var state = AutoscalingState()
        var target = 1
        var changedAt: Int?
        for index in 0...200 {
            let decision = AutoscalingPolicy.decide(
                config: config, currentTarget: target, running: target,
                totalOngoing: 0, latestOngoing: 0, now: self.tick(index), state: &state
            )
            if decision.target != target, changedAt == nil { changedAt = index }
            target = decision.target
        }
        #expect(changedAt == 100)
        #expect(target == 0)
        // Even with no delays, 5 → 0 is two decisions.
        var quick = AutoscalingState()
        let first = AutoscalingPolicy.decide(
            config: self.config(min: 0, max: 10), currentTarget: 5, running: 5,
            totalOngoing: 0, latestOngoing: 0, now: 0, state: &quick
        )
        #expect(first.target == 1)
        #expect(first.reason.contains("two steps"))
        let second = AutoscalingPolicy.decide(
            config: self.config(min: 0, max: 10), currentTarget: 1, running: 1,
            totalOngoing: 0, latestOngoing: 0, now: 0.1, state: &quick
        )
        #expect(second.target == 0)
    }
}
