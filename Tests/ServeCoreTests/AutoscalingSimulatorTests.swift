import Foundation
import Testing

@testable import ServeCore

@Suite("Autoscaling simulator")
struct AutoscalingSimulatorTests {
    /// The deployment of examples/autoscale.yaml (and of the integration test), with overrides.
    func deployment(
        min: Int = 1,
        max: Int = 4,
        upscale: Double = 1,
        downscale: Double = 3,
        maxOngoing: Int = 8,
        maxQueued: Int? = nil
    ) throws -> DeploymentConfig {
        let yaml = """
            applications:
              - name: busy
                deployments:
                  - name: B
                    handler: sleep
                    max_ongoing_requests: \(maxOngoing)
            \(maxQueued.map { "        max_queued_requests: \($0)" } ?? "")
                    autoscaling_config:
                      min_replicas: \(min)
                      max_replicas: \(max)
                      target_ongoing_requests: 2
                      upscale_delay_s: \(upscale)
                      downscale_delay_s: \(downscale)
                      metrics_interval_s: 0.5
                      look_back_period_s: 2
            """
        let config = try ConfigParser.parse(yaml, knownHandlers: ["sleep"])
        return try #require(config.applications.first?.deployments.first)
    }

    func fixed(replicas: Int, maxOngoing: Int, maxQueued: Int) -> DeploymentConfig {
        DeploymentConfig(
            name: "F", handler: "sleep", numReplicas: .fixed(replicas),
            maxOngoingRequests: maxOngoing, maxQueuedRequests: maxQueued
        )
    }

    static let stepTrace = """
        time_s,clients,service_ms
        0,0,100
        2,16,100
        22,0,100
        52,0,100
        """

    /// The repository's root, from this file's path.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    // MARK: traces

    @Test("a closed-loop trace parses, skipping comments, blank lines, spaces and CRLF")
    func parseClosedLoop() throws {
        let trace = try LoadTrace.parse(csv: "# a comment\r\n\r\n Time_s , clients , service_ms\r\n0,0,100\r\n2, 16 ,50.5\r\n\n22,0,100\r\n")
        #expect(trace.mode == .clients)
        #expect(trace.rows == [
            LoadTrace.Row(time: 0, load: 0, serviceMs: 100),
            LoadTrace.Row(time: 2, load: 16, serviceMs: 50.5),
            LoadTrace.Row(time: 22, load: 0, serviceMs: 100),
        ])
        #expect(trace.duration == 22)
        #expect(trace.firstIncrease == 2)
        #expect(trace.stop == 22)
        #expect(trace.row(at: 1.9)?.load == 0)
        #expect(trace.row(at: 2)?.load == 16)
    }

    @Test("an open-loop trace parses; a trace that never stops has no stop time")
    func parseOpenLoop() throws {
        let trace = try LoadTrace.parse(csv: "time_s,rate_rps,service_ms\n1,2.5,20\n10,40,20\n")
        #expect(trace.mode == .rateRPS)
        #expect(trace.rows.map(\.load) == [2.5, 40])
        #expect(trace.duration == 10)
        #expect(trace.firstIncrease == 1)
        #expect(trace.stop == nil)
    }

    @Test(
        "bad traces are refused with the line",
        arguments: [
            ("", 1, "empty"),
            ("# only a comment\n", 1, "empty"),
            ("0,16,100\n", 1, "header"),
            ("time,clients,ms\n0,1,100\n", 1, "got `time,clients,ms`"),
            ("time_s,clients,service_ms\n", 1, "no rows"),
            ("time_s,clients,service_ms\n0,1,100\n2,4\n", 3, "expected 3 fields"),
            ("time_s,clients,service_ms\n# c\n0,x,100\n", 3, "clients `x` is not a number"),
            ("time_s,clients,service_ms\n0,1,100\n5,2,100\n5,3,100\n", 4, "not after the previous row's 5"),
            ("time_s,clients,service_ms\n0,2.5,100\n", 2, "whole number"),
            ("time_s,rate_rps,service_ms\n0,-1,100\n", 2, "rate_rps must be"),
            ("time_s,rate_rps,service_ms\n0,1,0\n", 2, "service_ms must be positive"),
            ("time_s,rate_rps,service_ms\n-1,1,10\n", 2, "negative"),
            ("time_s,rate_rps,service_ms\n0,1,inf\n", 2, "not a number"),
        ]
    )
    func parseErrors(csv: String, line: Int, message: String) {
        do {
            _ = try LoadTrace.parse(csv: csv)
            Issue.record("parsed: \(csv)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.message.contains(message), "\(error)")
            #expect(error.description.hasPrefix("line \(line): "))
        }
    }

    @Test("the examples parse: examples/autoscale.yaml and examples/step-trace.csv")
    func examples() throws {
        let yaml = try String(contentsOf: Self.root.appendingPathComponent("examples/autoscale.yaml"), encoding: .utf8)
        let config = try ConfigParser.parse(yaml, knownHandlers: ["echo", "sleep", "cpu", "env"])
        let deployment = try #require(config.applications.first?.deployments.first)
        #expect(deployment.handler == "sleep")
        #expect(deployment.maxOngoingRequests == 8)
        #expect(deployment.autoscaling == (try self.deployment()).autoscaling)
        let csv = try String(contentsOf: Self.root.appendingPathComponent("examples/step-trace.csv"), encoding: .utf8)
        let trace = try LoadTrace.parse(csv: csv)
        #expect(trace == (try LoadTrace.parse(csv: Self.stepTrace)))
    }

    // MARK: scaling

    @Test("the step trace scales 1 → 4 within upscale_delay_s + 1 s, and back to 1 within downscale + look_back + 1 s")
    func stepTrace() throws {
        let trace = try LoadTrace.parse(csv: Self.stepTrace)
        let result = AutoscalingSimulator(deployment: try self.deployment(), trace: trace, startup: 0).simulate()
        let summary = result.summary
        #expect(summary.maxRunning == 4)
        let up = try #require(summary.firstScaleUpAfter)
        #expect(up >= 1 && up <= 1 + 1, "scale-up \(up) s after the step")
        let reached = try #require(summary.maxReachedAfter)
        #expect(reached <= 1 + 1)
        let down = try #require(summary.backToMinAfter)
        #expect(down >= 3 && down <= 3 + 2 + 1, "back to 1 \(down) s after the load stopped")
        #expect(summary.rejected == 0)
        // No request is lost: 16 clients of 100 ms keep answering.
        #expect(summary.completed > 2_500)

        let rows = result.rows
        #expect(rows.count == 53)
        #expect(rows.map(\.time) == (0...52).map(Double.init))
        #expect(rows[0].target == 1 && rows[0].running == 1 && rows[0].load == 0)
        #expect(rows[2].load == 16 && rows[2].ongoing == 8 && rows[2].queued == 8, "one replica, 8 slots, 8 waiting")
        for row in rows where row.time >= 5 && row.time <= 22 {
            #expect(row.running == 4 && row.target == 4 && row.queued == 0 && row.ongoing == 16, "\(row)")
        }
        for row in rows where row.time >= 22 + 3 + 2 + 1 {
            #expect(row.running == 1 && row.target == 1 && row.ongoing == 0, "\(row)")
        }
        for row in rows where row.time >= 6 && row.time <= 21 {
            #expect(row.p50Ms == 100 && row.p99Ms == 100, "\(row)")
            #expect(row.completed == 160)
        }
        // Exactly one decision up and one down: the delays hold off anything in between.
        #expect(result.decisions.map { [$0.before, $0.after] } == [[1, 4], [4, 1]])
        #expect(result.decisions.allSatisfy { !$0.reason.isEmpty })
    }

    @Test("a start-up time delays RUNNING, not the target")
    func startupDelay() throws {
        let trace = try LoadTrace.parse(csv: Self.stepTrace)
        let rows = AutoscalingSimulator(deployment: try self.deployment(), trace: trace, startup: 2).run()
        let firstTarget = try #require(rows.first { $0.target == 4 }?.time)
        let firstRunning = try #require(rows.first { $0.running == 4 }?.time)
        #expect(firstRunning - firstTarget == 2)
    }

    @Test("steady load gives a steady replica count, closed or open loop")
    func noFlapping() throws {
        let deployment = try self.deployment(max: 10)
        let closed = try LoadTrace.parse(csv: "time_s,clients,service_ms\n0,8,100\n120,8,100\n")
        let open = try LoadTrace.parse(csv: "time_s,rate_rps,service_ms\n0,30,100\n120,30,100\n")
        for (trace, expected) in [(closed, 4), (open, 2)] {
            let result = AutoscalingSimulator(deployment: deployment, trace: trace, startup: 0).simulate(step: 0.5)
            let settled = result.rows.filter { $0.time >= 10 }
            #expect(settled.allSatisfy { $0.target == expected && $0.running == expected }, "\(settled.map(\.target))")
            #expect(result.decisions.allSatisfy { $0.time < 10 }, "\(result.decisions)")
            #expect(result.decisions.allSatisfy { $0.after > $0.before }, "\(result.decisions)")
        }
    }

    @Test("a full router queue answers 503, counted as rejected; queued never passes max_queued_requests")
    func rejections() throws {
        // Open loop: 50 requests/s against one replica of one 100 ms slot (10/s).
        let open = try LoadTrace.parse(csv: "time_s,rate_rps,service_ms\n0,50,100\n10,0,100\n")
        let deployment = self.fixed(replicas: 1, maxOngoing: 1, maxQueued: 2)
        let result = AutoscalingSimulator(deployment: deployment, trace: open, startup: 0).simulate()
        let rejected = result.rows.reduce(0) { $0 + $1.rejected }
        let completed = result.rows.reduce(0) { $0 + $1.completed }
        let last = try #require(result.rows.last)
        #expect(rejected == result.summary.rejected)
        #expect(rejected > 350)
        #expect(completed == result.summary.completed)
        #expect(completed + rejected + last.ongoing + last.queued == 500, "every arrival is answered, refused or still in flight")
        #expect(result.rows.allSatisfy { $0.queued <= 2 && $0.running == 1 && $0.target == 1 })
        // Waiting requests are answered within the queue's depth of service times.
        #expect(result.rows.compactMap(\.p99Ms).allSatisfy { $0 <= 300 })

        // Closed loop: 5 clients, 1 slot, 2 waiting: the other two are refused and retry.
        let closed = try LoadTrace.parse(csv: "time_s,clients,service_ms\n0,5,100\n5,0,100\n")
        let second = AutoscalingSimulator(deployment: deployment, trace: closed, startup: 0).simulate()
        #expect(second.summary.rejected > 50)
        #expect(second.rows.allSatisfy { $0.queued <= 2 })

        // max_queued_requests 0: no queue at all.
        let none = AutoscalingSimulator(deployment: self.fixed(replicas: 1, maxOngoing: 1, maxQueued: 0), trace: open, startup: 0).simulate()
        #expect(none.rows.allSatisfy { $0.queued == 0 })
        #expect(none.summary.rejected > rejected)
    }

    @Test("min_replicas 0: the first request waits at the router, starts a replica at once, and is answered once it runs")
    func coldStart() throws {
        let deployment = try self.deployment(min: 0, max: 2)
        let trace = try LoadTrace.parse(csv: "time_s,clients,service_ms\n1,1,100\n5,0,100\n30,0,100\n")
        let result = AutoscalingSimulator(deployment: deployment, trace: trace, startup: 2).simulate()
        let rows = result.rows
        #expect(rows[0].target == 0 && rows[0].running == 0)
        let first = try #require(result.decisions.first)
        #expect(first.time == 1 && first.before == 0 && first.after == 1)
        #expect(first.reason.contains("cold start"))
        #expect(rows[1].target == 1 && rows[1].running == 0 && rows[1].queued == 1)
        #expect(rows[2].running == 0 && rows[2].queued == 1)
        #expect(rows[3].running == 1)
        // Waited 2 s for the replica, then 100 ms of service.
        #expect(rows[4].p99Ms == 2_100)
        #expect(rows[4].p50Ms == 100)
        #expect(result.summary.minReplicas == 0)
        let down = try #require(result.summary.backToMinAfter)
        #expect(down <= 3 + 2 + 1)
        #expect(rows.last?.target == 0 && rows.last?.running == 0)
        #expect(result.summary.rejected == 0)
    }

    @Test("the summary line; a duration cuts the trace short; a fixed deployment keeps its count")
    func summaryLine() throws {
        var trace = try LoadTrace.parse(csv: Self.stepTrace)
        let line = AutoscalingSimulator(deployment: try self.deployment(), trace: trace, startup: 0).simulate().summary.line
        #expect(line.hasPrefix("max 4 replicas running; first scale-up 1.3 s after the load rose at t=2 s; 4 running 1.3 s after it; "))
        #expect(line.contains("back to 1 4.8 s after the load stopped at t=22 s; "))
        #expect(line.hasSuffix(" completed, 0 rejected (503)"))

        trace.duration = 10
        let cut = AutoscalingSimulator(deployment: try self.deployment(), trace: trace, startup: 0).simulate()
        #expect(cut.rows.last?.time == 10)
        #expect(cut.summary.loadStopAt == nil)
        #expect(cut.summary.line.contains("the load does not stop"))

        let fixed = AutoscalingSimulator(deployment: self.fixed(replicas: 2, maxOngoing: 4, maxQueued: -1), trace: trace, startup: 0).simulate()
        #expect(fixed.decisions.isEmpty)
        #expect(fixed.rows.allSatisfy { $0.target == 2 && $0.running == 2 })
        #expect(fixed.summary.line.hasPrefix("not autoscaled: 2 replicas throughout; "))
    }

    @Test("runs are deterministic")
    func deterministic() throws {
        let trace = try LoadTrace.parse(csv: "time_s,rate_rps,service_ms\n0,7,130\n3,45,90\n9,3,300\n15,0,10\n25,0,10\n")
        let simulator = AutoscalingSimulator(deployment: try self.deployment(min: 0, max: 6), trace: trace, startup: 0.7)
        let first = simulator.simulate(step: 0.5)
        #expect(first == simulator.simulate(step: 0.5))
        #expect(first.rows.count == 51)
        #expect(first.summary.maxRunning > 1)
    }

    // MARK: output

    @Test("the table is aligned and the JSON has one object per row")
    func tableAndJSON() throws {
        let trace = try LoadTrace.parse(csv: Self.stepTrace)
        let rows = AutoscalingSimulator(deployment: try self.deployment(), trace: trace, startup: 0).run()
        let table = SimulationReport.table(rows, mode: trace.mode).split(separator: "\n")
        #expect(table.count == rows.count + 1)
        #expect(Set(table.map(\.count)).count == 1, "every line as wide as the header")
        #expect(table[0].split(separator: " ") == ["time_s", "clients", "ongoing", "queued", "target", "running", "completed", "rejected", "p50_ms", "p99_ms"])
        let json = try JSONValue.parse(SimulationReport.json(rows, mode: trace.mode))
        let array = try #require(json.arrayValue)
        #expect(array.count == rows.count)
        #expect(array[4]["target"]?.doubleValue == 4)
        #expect(array[4]["clients"]?.doubleValue == 16)
        #expect(array[0]["p50_ms"] == .null)
        #expect(array[10]["p99_ms"]?.doubleValue == 100)
    }

    @Test("number formatting")
    func formatting() {
        #expect(SimulationFormat.fixed(2.345, 1) == "2.3")
        #expect(SimulationFormat.fixed(-0.04, 1) == "0.0")
        #expect(SimulationFormat.fixed(-1.25, 2) == "-1.25")
        #expect(SimulationFormat.fixed(7, 0) == "7")
        #expect(SimulationFormat.fixed(0.05, 2) == "0.05")
        #expect(SimulationFormat.seconds(4.0) == "4")
        #expect(SimulationFormat.seconds(1.26) == "1.3")
    }
}
