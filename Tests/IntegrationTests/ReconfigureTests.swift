import Foundation
import Logging
import NIOConcurrencyHelpers
import Serve
import ServeCore
import ServeHead
import ServeWorker
import Testing

/// A slow `reconfigure()` must not kill its node (issue 13, item 3): user code runs aside from
/// the worker's control stream, and one that outlasts its timeout fails its replica alone.
@Suite("Swift deployment reconfigure", .serialized)
struct ReconfigureTests {
    /// Its reconfigure never returns (until cancelled).
    struct Stubborn: Deployment {
        func handle(_ request: ServeRequest) async throws -> ServeResponse { .text("stubborn\n") }
        func reconfigure(userConfig: JSONValue?) async throws {
            try await Task.sleep(for: .seconds(3600))
        }
    }

    static func config(version: Int) throws -> ServeConfig {
        try ConfigParser.parse(
            """
            applications:
              - name: stubborn
                route_prefix: /stubborn
                deployments:
                  - name: Stubborn
                    handler: stubborn
                    user_config: {version: \(version)}
                    health_check_timeout_s: 2
                    ray_actor_options: {num_cpus: 0.5}
              - name: steady
                route_prefix: /steady
                deployments:
                  - {name: Steady, handler: echo, ray_actor_options: {num_cpus: 0.5}}
            """,
            knownHandlers: ["stubborn", "echo"]
        )
    }

    static func replicaIDs(_ head: HeadRuntime, _ app: String, _ deployment: String) async -> [String] {
        let status = await head.controller.statusJSON()
        let replicas = status["applications"]?[app]?["deployments"]?[deployment]?["replicas"]?.arrayValue ?? []
        return replicas.filter { $0["state"]?.stringValue == "RUNNING" }.compactMap { $0["replica_id"]?.stringValue }
    }

    static func waitFor(_ what: String, _ head: HeadRuntime, timeout: Duration = .seconds(30), _ done: () async -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if await done() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        let status = await head.controller.statusJSON()
        let events = await head.controller.eventsJSON()
        throw HarnessFailure("\(what) did not happen:\n\(status.jsonString())\n\(events.jsonString())")
    }

    @Test("a reconfigure() that hangs past --head-timeout-s fails its replica alone; the node stays ALIVE and its other replicas run on")
    func hangingReconfigure() async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("serve-reconfigure-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: state) }
        let options = HeadOptions.loopback(state: state, token: "reconfigure-token")
        let head = try await HeadRuntime.start(options)
        var registry = DeploymentRegistry.builtIn
        registry.register("stubborn") { _ in Stubborn() }
        let worker = WorkerNode(
            options: WorkerOptions(
                headHost: "127.0.0.1", headPort: head.clusterPort, token: "reconfigure-token", nodeID: "patient",
                resources: ResourceSet([ResourceSet.cpu: 2]), listenHost: "127.0.0.1",
                heartbeatInterval: .milliseconds(200), headTimeout: .seconds(1), registry: registry))
        // The worker is the head's own node here: it stops in the head's order.
        let running = Task { try await head.run(hosting: worker) }
        do {
            await head.controller.deploy(try Self.config(version: 1))
            try await Self.waitFor("both replicas running", head) {
                let stubborn = await Self.replicaIDs(head, "stubborn", "Stubborn")
                let steady = await Self.replicaIDs(head, "steady", "Steady")
                return stubborn.count == 1 && steady.count == 1
            }
            let stubborn = await Self.replicaIDs(head, "stubborn", "Stubborn")
            let steady = await Self.replicaIDs(head, "steady", "Steady")

            // user_config changes in place: reconfigure() is called, and never returns.
            await head.controller.deploy(try Self.config(version: 2))
            try await Self.waitFor("the stubborn replica replaced", head) {
                let now = await Self.replicaIDs(head, "stubborn", "Stubborn")
                return now.count == 1 && now != stubborn
            }
            // reconfigure() hung for its 2 s timeout: twice --head-timeout-s (1 s).
            let events = await head.controller.eventsJSON().jsonString()
            #expect(events.contains("reconfigure failed: reconfigure() did not answer within"), "\(events)")
            #expect(!events.contains("is DEAD"), "\(events)")
            #expect(await head.controller.nodeStates["patient"] == .alive)
            #expect(await Self.replicaIDs(head, "steady", "Steady") == steady, "the other replica on the node should run on")
        } catch {
            await Self.stop(head, running)
            throw error
        }
        await Self.stop(head, running)
    }

    /// The head's graceful shutdown: the applications first, then the worker leaves, then the
    /// rest of the head (`HeadRuntime.run`).
    static func stop(_ head: HeadRuntime, _ running: Task<Void, any Error>) async {
        await head.requestShutdown()
        // Bounded: a worker stuck in user code on its control loop (the fault this suite
        // guards against) would never return, and the test must fail rather than hang.
        let stopped: Bool = await withCheckedContinuation { continuation in
            let pending = NIOLockedValueBox<CheckedContinuation<Bool, Never>?>(continuation)
            let finish: @Sendable (Bool) -> Void = { value in
                pending.withLockedValue { waiting in
                    waiting?.resume(returning: value)
                    waiting = nil
                }
            }
            Task { _ = await running.result; finish(true) }
            Task { try? await Task.sleep(for: .seconds(15)); finish(false) }
        }
        #expect(stopped, "the head and its worker did not stop within 15 s")
    }
}
