package main

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodenet/nodenet/hack/internal/background"
)

// The specs `make conformance` runs, as the issue names them; --all adds Serial and Disruptive.
const (
	focus     = `\[sig-network\].*\[Conformance\]`
	skip      = `Feature:|\[Serial\]|\[Disruptive\]`
	skipOfAll = `Feature:`
)

// conformance runs e2e.test against the running cluster, or against one it starts and removes
// afterwards, and prints the summary of its JUnit report.
func conformance(ctl background.Control, o options, stateDir string) (err error) {
	s, err := ctl.Running()
	if err != nil {
		fmt.Println("no real-node cluster is running: starting one for this run")
		if err := ctl.Up(o.serveArgs(stateDir)...); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, ctl.Down()) }()
		if s, err = ctl.Running(); err != nil {
			return err
		}
	}
	reportDir, err := filepath.Abs(o.reportDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(reportDir, 0o755); err != nil {
		return err
	}
	skipSpecs := skip
	if o.all {
		skipSpecs = skipOfAll
	}
	logFile, err := os.Create(filepath.Join(reportDir, "e2e.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := s.Command(filepath.Join(o.nodeBin, "e2e.test"),
		"--kubeconfig="+s.AdminKubeconfig,
		"--kubectl-path="+filepath.Join(s.ClusterBin, "kubectl"),
		"--ginkgo.focus="+focus, "--ginkgo.skip="+skipSpecs,
		"--ginkgo.timeout=4h", "--ginkgo.no-color",
		"--report-dir="+reportDir,
		fmt.Sprintf("--num-nodes=%d", o.nodes))
	cmd.Stdout = io.MultiWriter(os.Stdout, logFile)
	cmd.Stderr = cmd.Stdout
	fmt.Printf("\n=== e2e.test --ginkgo.focus='%s' --ginkgo.skip='%s'\n", focus, skipSpecs)
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start).Round(time.Second)
	sum, err := summarize(filepath.Join(reportDir, "junit_01.xml"))
	if err != nil {
		return errors.Join(runErr, err)
	}
	fmt.Printf("\n=== Conformance summary (%v)\n%s", elapsed, sum)
	fmt.Printf("JUnit report and log: %s\n", reportDir)
	if runErr != nil || sum.failed > 0 {
		return fmt.Errorf("%d of %d specs failed (e2e.test: %v)", sum.failed, sum.passed+sum.failed, runErr)
	}
	return nil
}

// junit is the part of Ginkgo's JUnit report the summary reads.
type junit struct {
	Suites []struct {
		Cases []struct {
			Name    string    `xml:"name,attr"`
			Skipped *struct{} `xml:"skipped"`
			Failure *struct {
				Message string `xml:"message,attr"`
			} `xml:"failure"`
			Error *struct{} `xml:"error"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

type summary struct {
	passed, failed, skipped int
	failures                []string
}

func (s summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ran %d specs: %d passed, %d failed (%d skipped)\n", s.passed+s.failed, s.passed, s.failed, s.skipped)
	for _, f := range s.failures {
		fmt.Fprintf(&b, "  FAILED %s\n", f)
	}
	return b.String()
}

func summarize(path string) (summary, error) {
	var s summary
	data, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("JUnit report: %w", err)
	}
	var j junit
	if err := xml.Unmarshal(data, &j); err != nil {
		return s, fmt.Errorf("JUnit report %s: %w", path, err)
	}
	for _, suite := range j.Suites {
		for _, c := range suite.Cases {
			// Ginkgo reports its suite-level nodes as cases too; they count only when they fail.
			suiteNode := strings.HasPrefix(c.Name, "[") && strings.Contains(c.Name, "Suite]")
			switch {
			case suiteNode && c.Failure == nil && c.Error == nil:
			case c.Skipped != nil:
				s.skipped++
			case c.Failure != nil || c.Error != nil:
				s.failed++
				s.failures = append(s.failures, c.Name)
			default:
				s.passed++
			}
		}
	}
	return s, nil
}
