/// What one config may ask for (DESIGN.md: "more replicas than a documented limit" is refused).
/// The head keeps a record per replica it is asked for, PENDING ones too, and saves a config
/// before it acts on it: without these bounds one `PUT` with `num_replicas: 1000000000` grows
/// the head without end, and the saved config takes the restarted head down again. A config
/// past any of them is refused whole, before anything is saved or changed, with the field path.
public enum ConfigLimits {
    /// Replicas one deployment may ask for: `num_replicas`, and each of `min_replicas`,
    /// `initial_replicas` and `max_replicas` of its `autoscaling_config`.
    public static let maxReplicasPerDeployment = 10_000

    /// Replicas a whole config may start with: the sum over its deployments of `num_replicas`,
    /// or of the larger of `initial_replicas` and `min_replicas` for an autoscaled one (the
    /// autoscaler adds more only for requests that are really waiting, and never past each
    /// deployment's `max_replicas`).
    public static let maxReplicasPerConfig = 100_000

    /// Applications in one config.
    public static let maxApplications = 10_000

    /// The most of one resource a replica may reserve (`num_cpus`, `num_gpus`, `memory`, each
    /// custom resource): as much as one node may offer (`ResourceSet.maxReportedQuantity`, 10^13
    /// whole units), since a larger request could never be placed.
    public static let maxResourceAmount: Double = 10_000_000_000_000

    /// Resource amounts are fixed point to this step (`ResourceQuantity.scale`): an amount that
    /// is not a whole number of steps would silently become another amount.
    public static let resourceStep: Double = 1 / Double(ResourceQuantity.scale)

    /// Whether `amount` is a whole number of `resourceStep`s (0.1 and 0.0001 are; 0.00001 and
    /// 0.00015 are not). Binary floating point cannot hold 0.1 exactly, so "whole" allows the
    /// rounding error of the product, never a real fraction of a step.
    public static func isWholeSteps(_ amount: Double) -> Bool {
        let steps = amount * Double(ResourceQuantity.scale)
        return (steps - steps.rounded()).magnitude <= max(1e-6, steps.magnitude * 1e-12)
    }
}
