import Testing

@testable import ServeCore

@Suite("Idempotent routes in the config")
struct IdempotentRouteTests {
    @Test("idempotent is an application's flag, false unless set; anything but a boolean is refused with its path")
    func parsed() throws {
        let config = try parse(
            """
            applications:
              - name: model
                route_prefix: /predict
                idempotent: true
                deployments: [{name: Model, handler: echo}]
              - name: other
                route_prefix: /other
                deployments: [{name: Other, handler: echo}]
            """
        )
        #expect(config.applications.map(\.idempotent) == [true, false])
        #expect(
            problems(
                """
                applications:
                  - name: model
                    idempotent: "yes"
                    deployments: [{name: Model, handler: echo}]
                """
            ) == [#"applications[0].idempotent: must be true or false, not a string ("yes")"#]
        )
    }
}
