import Foundation
import NIOConcurrencyHelpers
import Serve
import ServeCore
import ServeEmbedded
import ServeHead
import Testing

/// A Swift deployment's `checkHealth()` driven for real: a head with its own worker in this
/// process (the stock binaries have no deployment whose health can fail), a replica that turns
/// sick or hangs its check, and the replacement that follows.
@Suite("Swift deployment health checks", .serialized)
struct SwiftHealthCheckTests {
    /// How the next check of every `moody` replica behaves.
    enum Mood: Sendable { case fine, failing, hanging }
    static let mood = NIOLockedValueBox(Mood.fine)

    struct Moody: Deployment {
        func handle(_ request: ServeRequest) async throws -> ServeResponse { .text("ok\n") }
        func checkHealth() async throws {
            switch SwiftHealthCheckTests.mood.withLockedValue({ $0 }) {
            case .fine: return
            case .failing: throw DeploymentError("the model lost its GPU")
            case .hanging: try await Task.sleep(for: .seconds(3600))
            }
        }
    }

    func withCluster(_ body: (EmbeddedCluster) async throws -> Void) async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("serve-health-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: state) }
        var options = HeadOptions.loopback(state: state, token: "health-token")
        options.registry.register("moody") { _ in Moody() }
        var resources = EmbeddedCluster.LocalResources()
        resources.numCPUs = 2
        resources.numGPUs = 0
        let cluster = try await EmbeddedCluster.start(head: options, resources: resources)
        let running = Task { try await cluster.run() }
        do {
            try await body(cluster)
        } catch {
            await cluster.head.requestShutdown()
            _ = await running.result
            throw error
        }
        await cluster.head.requestShutdown()
        try await running.value
    }

    func runningReplica(_ cluster: EmbeddedCluster) async -> String? {
        let status = await cluster.head.controller.statusJSON()
        let replicas = status["applications"]?["moody"]?["deployments"]?["Moody"]?["replicas"]?.arrayValue ?? []
        guard replicas.count == 1, replicas[0]["state"]?.stringValue == "RUNNING" else { return nil }
        return replicas[0]["replica_id"]?.stringValue
    }

    func waitForReplica(_ cluster: EmbeddedCluster, otherThan old: String?, timeout: Duration) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let id = await self.runningReplica(cluster), id != old { return id }
            try await Task.sleep(for: .milliseconds(50))
        }
        let status = await cluster.head.controller.statusJSON()
        let events = await cluster.head.controller.eventsJSON()
        throw HarnessFailure("no new RUNNING replica (old: \(old ?? "none")):\n\(status.jsonString())\n\(events.jsonString())")
    }

    @Test("a replica whose checkHealth throws three times in a row, or hangs past the timeout, is replaced")
    func failingAndHangingChecks() async throws {
        Self.mood.withLockedValue { $0 = .fine }
        try await self.withCluster { cluster in
            let config = try ConfigParser.parse(
                """
                applications:
                  - name: moody
                    route_prefix: /moody
                    deployments:
                      - name: Moody
                        handler: moody
                        health_check_period_s: 0.2
                        health_check_timeout_s: 0.5
                        ray_actor_options: {num_cpus: 0.5}
                """,
                knownHandlers: ["moody"]
            )
            await cluster.head.controller.deploy(config)
            let first = try await self.waitForReplica(cluster, otherThan: nil, timeout: .seconds(30))
            // Healthy checks for a while change nothing.
            try await Task.sleep(for: .seconds(1))
            #expect(await self.runningReplica(cluster) == first)

            Self.mood.withLockedValue { $0 = .failing }
            let second = try await self.waitForReplica(cluster, otherThan: first, timeout: .seconds(10))
            let events = await cluster.head.controller.eventsJSON().jsonString()
            #expect(events.contains("failed 3 health checks in a row; last: the model lost its GPU"), "\(events)")

            Self.mood.withLockedValue { $0 = .hanging }
            _ = try await self.waitForReplica(cluster, otherThan: second, timeout: .seconds(10))
            let later = await cluster.head.controller.eventsJSON().jsonString()
            #expect(later.contains("did not answer within"), "\(later)")
            Self.mood.withLockedValue { $0 = .fine }
        }
    }
}
