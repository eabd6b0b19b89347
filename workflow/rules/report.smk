# The run's results in one place: results/samples.txt, results/metrics.json, results/loss.png.


rule report:
    input:
        samples=rules.sample.output.samples,
        consistency=rules.sample.output.consistency,
        metrics=rules.evaluate.output.metrics,
        plot=rules.evaluate.output.plot,
    output:
        samples=REPORT["samples"],
        metrics=REPORT["metrics"],
        plot=REPORT["plot"],
    params:
        hashes=HASHES_JSON,
        samples_dir=input_dir("samples"),
        evaluate_dir=input_dir("metrics"),
    log:
        "logs/report.log",
    conda:
        ENV
    shell:
        "python -m storylm.report --hashes {params.hashes:q} --samples-dir {params.samples_dir}"
        " --evaluate-dir {params.evaluate_dir} --samples {output.samples} --metrics {output.metrics}"
        " --plot {output.plot} > {log} 2>&1"
