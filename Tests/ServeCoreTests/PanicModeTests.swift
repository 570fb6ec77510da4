import Testing

@testable import ServeCore

@Suite("Panic mode")
struct PanicModeTests {
    /// Ray-like delays (30 s up, 60 s down), a 30 s look-back, and panic mode on unless told.
    func config(panic: Bool = true, downscaleDelay: Double = 60) -> AutoscalingConfig {
        AutoscalingConfig(
            minReplicas: 1,
            maxReplicas: 100,
            targetOngoingRequests: 2,
            upscaleDelayS: 30,
            downscaleDelayS: downscaleDelay,
            lookBackPeriodS: 30,
            panicWindowS: panic ? 6 : nil,
            panicThreshold: panic ? 2 : nil
        )
    }

    /// A deployment driven tick by tick, the running count following the target at once.
    struct Driver {
        var config: AutoscalingConfig
        var target: Int
        var state = AutoscalingState()
        var decisions: [AutoscalingDecision] = []

        init(config: AutoscalingConfig, target: Int) {
            self.config = config
            self.target = target
        }

        @discardableResult
        mutating func tick(now: Double, stable: Double, panic: Double?) -> AutoscalingDecision {
            let decision = AutoscalingPolicy.decide(
                config: self.config, currentTarget: self.target, running: self.target,
                totalOngoing: stable, latestOngoing: panic ?? stable, now: now, state: &self.state,
                panicOngoing: panic
            )
            self.target = decision.target
            self.decisions.append(decision)
            return decision
        }
    }

    @Test("off by default: the config has no panic fields and a panic aggregate changes nothing")
    func offByDefault() {
        let plain = AutoscalingConfig()
        #expect(plain.panicWindowS == nil && plain.panicThreshold == nil && !plain.panicEnabled)
        #expect(!AutoscalingConfig.auto.panicEnabled)

        var with = Driver(config: self.config(panic: false), target: 2)
        var without = with
        for index in 0...400 {
            let now = Double(index) / 10
            let stable = index < 100 ? 4.0 : 40.0
            let a = with.tick(now: now, stable: stable, panic: stable * 10)
            let b = AutoscalingPolicy.decide(
                config: without.config, currentTarget: without.target, running: without.target,
                totalOngoing: stable, latestOngoing: stable * 10, now: now, state: &without.state
            )
            without.target = b.target
            #expect(a == b)
            #expect(with.state == without.state)
        }
        // Only the normal, delayed upscale happened (30 s after the load rose at 10 s).
        #expect(with.target == 20)
        #expect(!with.decisions.contains { $0.reason.hasPrefix("panic") })
    }

    @Test("a burst to 10× capacity scales up within one tick, skipping the upscale delay")
    func burstScalesUpAtOnce() {
        var driver = Driver(config: self.config(), target: 2)
        // Calm: 2 replicas, 4 ongoing, 2 per replica.
        for index in 0..<50 {
            #expect(driver.tick(now: Double(index) / 10, stable: 4, panic: 4).target == 2)
        }
        // The burst: the panic window sees 40 ongoing (20 replicas' worth = 10× capacity), the
        // long window barely moves yet.
        let decision = driver.tick(now: 5, stable: 5, panic: 40)
        #expect(decision.target == 20)
        #expect(decision.reason.hasPrefix("panic: "))
        #expect(decision.reason.contains("desired 20 ≥ threshold 2 × 2 running"))
        #expect(decision.reason.contains("upscale 2 → 20 now, no delay"))
        #expect(driver.state.panicSince == 5)
        #expect(driver.state.pending == nil)
    }

    @Test("panic is capped by max_replicas and below the threshold does not start")
    func thresholdAndBounds() {
        var config = self.config()
        config.maxReplicas = 8
        var driver = Driver(config: config, target: 4)
        // 7 replicas' worth on 4 running: 1.75× < 2×, no panic; the normal upscale waits.
        #expect(driver.tick(now: 0, stable: 14, panic: 14).target == 4)
        #expect(driver.state.panicSince == nil)
        // 8 replicas' worth: exactly 2×, panic (Knative's >=), capped at 8 anyway.
        #expect(driver.tick(now: 0.1, stable: 14, panic: 16).target == 8)
        #expect(driver.state.panicSince == 0.1)
        // 40 replicas' worth: still 8, the bound.
        let decision = driver.tick(now: 0.2, stable: 20, panic: 80)
        #expect(decision.target == 8)
        #expect(decision.reason.contains("bounds max 8 → 8"))
    }

    @Test("no downscale while panicking, even when the load drops; a bigger burst ratchets up")
    func noDownscaleDuringPanic() {
        var driver = Driver(config: self.config(downscaleDelay: 0), target: 2)
        #expect(driver.tick(now: 0, stable: 4, panic: 40).target == 20)
        // The load vanishes: with no downscale delay the normal policy would drop at once.
        for index in 1..<300 {
            let decision = driver.tick(now: Double(index) / 10, stable: 0, panic: 0)
            #expect(decision.target == 20)
            #expect(decision.reason.hasPrefix("panic: "))
        }
        #expect(driver.decisions.last?.reason.contains("holding 20, no downscale while panicking") == true)
        // A second burst, relative to 20 running: 100 replicas' worth is 5×, up again at once.
        #expect(driver.tick(now: 29.95, stable: 10, panic: 200).target == 100)
        #expect(driver.state.panicSince == 0)  // the same panic, extended
        #expect(driver.state.panicLastTriggered == 29.95)
    }

    @Test("panic ends after a calm look-back window, then the normal downscale waits its delay")
    func panicEndsThenNormalDownscale() {
        var driver = Driver(config: self.config(downscaleDelay: 60), target: 2)
        #expect(driver.tick(now: 0, stable: 4, panic: 40).target == 20)
        // Calm from 0.1 s on: the condition last held at 0 s; panic holds through 29.9 s.
        var index = 1
        while Double(index) / 10 < 30 {
            #expect(driver.tick(now: Double(index) / 10, stable: 4, panic: 4).target == 20)
            index += 1
        }
        #expect(driver.state.panicSince == 0)
        // At 30 s the calm has lasted a whole look-back: panic ends, the downscale 20 → 2 starts
        // its 60 s delay.
        let ended = driver.tick(now: 30, stable: 4, panic: 4)
        #expect(ended.target == 20)
        #expect(ended.reason.hasPrefix("panic ended (calm for 30 s); "))
        #expect(ended.reason.contains("downscale 20 → 2 held 0 s of 60 s"))
        #expect(driver.state.panicSince == nil && driver.state.panicLastTriggered == nil)
        index = 301
        while Double(index) / 10 < 90 {
            #expect(driver.tick(now: Double(index) / 10, stable: 4, panic: 4).target == 20)
            index += 1
        }
        let down = driver.tick(now: 90, stable: 4, panic: 4)
        #expect(down.target == 2)
        #expect(down.reason.hasSuffix("downscale 20 → 2 after 60 s"))
    }

    @Test("switching panic mode off mid-panic drops the panic state")
    func switchedOff() {
        var driver = Driver(config: self.config(downscaleDelay: 0), target: 2)
        #expect(driver.tick(now: 0, stable: 4, panic: 40).target == 20)
        driver.config = self.config(panic: false, downscaleDelay: 0)
        #expect(driver.tick(now: 1, stable: 4, panic: 4).target == 2)
        #expect(driver.state == AutoscalingState())
    }

    @Test("a MetricsWindow gives the panic window's aggregate over a shorter length")
    func windowOverShorterLength() {
        var window = MetricsWindow(lookBack: 30)
        window.record(source: "r1", value: 0, at: 0)
        window.record(source: "r1", value: 20, at: 27)
        // Mean over 30 s: 20 × 3 / 30 = 2; over the last 6 s: 20 × 3 / 6 = 10.
        #expect(window.aggregate(now: 30, aggregation: "mean") == 2)
        #expect(window.aggregate(now: 30, aggregation: "mean", over: 30) == 2)
        #expect(window.aggregate(now: 30, aggregation: "mean", over: 6) == 10)
        #expect(window.aggregate(now: 30, aggregation: "min", over: 2) == 20)
        #expect(window.aggregate(now: 30, aggregation: "min", over: 6) == 0)
        #expect(window.aggregate(now: 30, aggregation: "mean", over: 0) == 20)
        #expect(window.aggregate(now: 30, aggregation: "mean", over: -1) == 20)
    }

    // MARK: config

    func deployment(_ fields: String) -> String {
        """
        applications:
          - name: a
            deployments:
              - {name: A, handler: echo, autoscaling_config: {\(fields)}}
        """
    }

    @Test("panic_window_s and panic_threshold parse; absent, panic mode stays off")
    func parses() throws {
        let on = try parse(self.deployment("max_replicas: 10, panic_window_s: 6, panic_threshold: 2.0"))
        let config = try #require(on.applications[0].deployments[0].autoscaling)
        #expect(config.panicWindowS == 6)
        #expect(config.panicThreshold == 2)
        #expect(config.panicEnabled)

        let off = try parse(self.deployment("max_replicas: 10"))
        #expect(off.applications[0].deployments[0].autoscaling?.panicEnabled == false)
    }

    @Test("panic fields: both or neither, threshold above 1, window within the look-back")
    func validation() {
        let path = "applications[0].deployments[0].autoscaling_config"
        #expect(
            problems(self.deployment("panic_window_s: 6"))
                == ["\(path).panic_threshold: must be set together with panic_window_s (e.g. 2.0 = 200 %)"]
        )
        #expect(
            problems(self.deployment("panic_threshold: 2"))
                == ["\(path).panic_window_s: must be set together with panic_threshold"]
        )
        #expect(
            problems(self.deployment("panic_window_s: 6, panic_threshold: 1"))
                == ["\(path).panic_threshold: must be greater than 1, not 1"]
        )
        #expect(
            problems(self.deployment("panic_window_s: 6, panic_threshold: 0.5"))
                == ["\(path).panic_threshold: must be greater than 1, not 0.5"]
        )
        #expect(
            problems(self.deployment("panic_window_s: 0, panic_threshold: 2"))
                == ["\(path).panic_window_s: must be greater than 0, not 0"]
        )
        #expect(
            problems(self.deployment("panic_window_s: 40, panic_threshold: 2"))
                == ["\(path).panic_window_s: must be at most look_back_period_s (30), not 40"]
        )
        #expect(problems(self.deployment("look_back_period_s: 60, panic_window_s: 40, panic_threshold: 2")).isEmpty)
    }
}
