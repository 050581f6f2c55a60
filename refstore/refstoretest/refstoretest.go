// Package refstoretest gives tests of records on a remote the pieces of
// several machines sharing one git server: a bare remote, served over
// file:// and over real smart HTTP on loopback (git http-backend behind
// net/http/cgi in the test process, on a port the kernel picks), a switch
// that partitions the server away, and "machines" (local repositories).
// Nothing is mocked: every operation is real git over a real transport.
package refstoretest

import (
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/orch-hooks/orch-hooks/gittest"
)

// SetupEnv gives the test process (and so every git it starts) a private,
// deterministic git environment (gittest.SetupProcess); call it from
// TestMain before m.Run.
func SetupEnv() (cleanup func(), err error) { return gittest.SetupProcess() }

// Git runs git in dir and fails the test on error.
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	out, err := TryGit(dir, args...)
	if err != nil {
		t.Fatalf("git %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return strings.TrimSpace(out)
}

// TryGit runs git in dir and returns its combined output.
func TryGit(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ORCH_HOOKS=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Remote is a bare repository standing for the shared server.
type Remote struct {
	Root string // directory the HTTP server exports
	Dir  string // the bare repository, Root/remote.git
}

// NewRemote makes an empty bare repository that accepts pushes over HTTP
// and push options.
func NewRemote(t testing.TB) *Remote {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "remote.git")
	Git(t, root, "init", "-q", "--bare", "-b", "main", dir)
	Git(t, dir, "config", "http.receivepack", "true")
	Git(t, dir, "config", "receive.advertisePushOptions", "true")
	// No gc --auto process after every push: tests push hundreds of tiny
	// packs, and a server's housekeeping is not what they test.
	Git(t, dir, "config", "receive.autogc", "false")
	return &Remote{Root: root, Dir: dir}
}

// FileURL is the remote over file://.
func (r *Remote) FileURL() string { return "file://" + r.Dir }

// Server is the remote served over smart HTTP on 127.0.0.1.
type Server struct {
	URL         string // of the repository
	partitioned atomic.Bool
	requests    atomic.Int64
}

// Serve serves r over smart HTTP (git http-backend as CGI) on a loopback
// port the kernel picks, until the test ends.
func (r *Remote) Serve(t testing.TB) *Server {
	t.Helper()
	gitPath, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git not on PATH")
	}
	backend := &cgi.Handler{
		Path: gitPath,
		Args: []string{"http-backend"},
		Env: []string{
			"GIT_PROJECT_ROOT=" + r.Root,
			"GIT_HTTP_EXPORT_ALL=1",
			"GIT_CONFIG_NOSYSTEM=1",
			"HOME=" + os.Getenv("HOME"),
			"PATH=" + os.Getenv("PATH"),
			"ORCH_HOOKS=0",
		},
	}
	s := &Server{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		s.requests.Add(1)
		if s.partitioned.Load() {
			// A partition: the connection is cut without an answer.
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			http.Error(w, "partitioned", http.StatusServiceUnavailable)
			return
		}
		backend.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL + "/remote.git"
	return s
}

// Partition cuts (true) or heals (false) every connection to the server.
func (s *Server) Partition(on bool) { s.partitioned.Store(on) }

// Requests counts the HTTP requests the server has seen.
func (s *Server) Requests() int64 { return s.requests.Load() }

// NewMachine makes a local repository standing for one machine (its own
// objects and refs), returning its git dir.
func NewMachine(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "machine.git")
	Git(t, filepath.Dir(dir), "init", "-q", "--bare", dir)
	return dir
}
