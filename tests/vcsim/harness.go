package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const linkedMoveType = string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking)

// runtimeConfig can be changed at run time through POST /config.
type runtimeConfig struct {
	cloneDelay  time.Duration
	powerDelay  time.Duration
	failRate    float64
	leaveVMRate float64
}

type counters struct {
	soapCalls          map[string]int64
	soapTotal          int64
	cloneRequests      int64
	nonLinked          int64
	clonesOK           int64
	clonesFailed       int64
	injectedFailures   int64
	duplicateNames     int64
	inFlight           int64
	maxInFlight        int64
	inFlightByFolder   map[string]int64
	maxInFlightByFoler map[string]int64
}

func newCounters() counters {
	return counters{
		soapCalls:          map[string]int64{},
		inFlightByFolder:   map[string]int64{},
		maxInFlightByFoler: map[string]int64{},
	}
}

// cloneRecord is one CloneVM_Task's timeline, for benchmarks that measure how soon a freed
// clone slot is used again: wall-clock microseconds since the Unix epoch (the clock the
// database and the benchmark read too), done 0 while the task runs.
type cloneRecord struct {
	Name       string `json:"name"`
	Folder     string `json:"folder"`
	ReceivedUs int64  `json:"received_us"`
	DoneUs     int64  `json:"done_us"`
	Ok         bool   `json:"ok"`
	PowerOn    bool   `json:"power_on"`
}

type nameKey struct {
	folder types.ManagedObjectReference
	name   string
}

type harness struct {
	opts   options
	client *vim25.Client // in-process client: calls go through the simulator's dispatch and locking
	inner  http.Handler  // the simulator's mux

	golden     types.ManagedObjectReference
	goldenName string
	dcVMFolder types.ManagedObjectReference

	mu       sync.Mutex // guards everything below
	cfg      runtimeConfig
	rng      *rand.Rand
	stats    counters
	reserved map[nameKey]bool // clone names in flight per folder
	clones   []cloneRecord    // every CloneVM_Task since the last stats reset, in arrival order
	// clonesGen counts stats resets, so a clone started before one does not write into the
	// new list.
	clonesGen int

	pages *pager // RetrievePropertiesEx results not yet read (paging.go)

	// hiddenConfig holds the config of VMs made inaccessible (POST /vms/inaccessible).
	hiddenConfig map[types.ManagedObjectReference]*types.VirtualMachineConfigInfo

	// setPassword replaces the password Login accepts (called under mu).
	setPassword func(string)

	guest guestSim // VMware Tools and guest customization (guest.go)
}

func newHarness(o options, client *vim25.Client, inner http.Handler) *harness {
	return &harness{
		opts:   o,
		client: client,
		inner:  inner,
		cfg: runtimeConfig{
			cloneDelay:  o.cloneDelay,
			powerDelay:  o.powerDelay,
			failRate:    o.failRate,
			leaveVMRate: o.leaveVMRate,
		},
		rng:      rand.New(rand.NewSource(o.seed)),
		stats:    newCounters(),
		reserved: map[nameKey]bool{},
		pages:    newPager(),

		hiddenConfig: map[types.ManagedObjectReference]*types.VirtualMachineConfigInfo{},
		guest:        newGuestSim(o.guestDelay),
	}
}

// soapMethod returns the local name of the first element inside soapenv:Body.
func soapMethod(body []byte) string {
	d := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		if se, ok := tok.(xml.StartElement); ok {
			if inBody {
				return se.Name.Local
			}
			if se.Name.Local == "Body" {
				inBody = true
			}
		}
	}
}

// ServeHTTP wraps the simulator's handler: counts SOAP calls and intercepts
// the task methods that must run asynchronously.
func (h *harness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
		h.inner.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	name := soapMethod(body)
	h.mu.Lock()
	h.stats.soapTotal++
	if name == "" {
		h.stats.soapCalls["(unparsable)"]++
	} else {
		h.stats.soapCalls[name]++
	}
	h.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(body))

	switch name {
	case "CloneVM_Task", "PowerOnVM_Task", "PowerOffVM_Task", "Destroy_Task":
		if h.intercept(w, r, name, body) {
			return
		}
	case "DestroyCollector":
		unlistEventCollector(body)
	case "SetCollectorPageSize":
		defer unlistEventCollector(body)()
	case "WaitForUpdatesEx", "WaitForUpdates":
		// vCenter counts a pending long poll as activity; 0.24.2 only looks
		// at the request start, so an idle timeout shorter than maxWaitSeconds
		// would kill watching sessions. Keep the session alive meanwhile.
		if idle := simulator.SessionIdleTimeout; idle > 0 {
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				t := time.NewTicker(idle / 3)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						if !h.sessionValid(r) {
							return
						}
					}
				}
			}()
		}
	case "RetrieveProperties", "RetrievePropertiesEx", "ContinueRetrievePropertiesEx", "CancelRetrievePropertiesEx":
		// 0.24.2 answers these without a session (with per-property
		// NotAuthenticated in missingSet); vCenter faults the whole call.
		if !h.sessionValid(r) {
			writeFault(w, "The session is not authenticated.", notAuthenticatedXML(
				types.ManagedObjectReference{Type: "PropertyCollector", Value: "propertyCollector"}, "System.View"))
			return
		}
		// 0.24.2 ignores maxObjects and has no continuation: page like vCenter.
		if h.paging(w, r, name, body) {
			return
		}
	}
	h.inner.ServeHTTP(w, r)
}

// sessionValid asks the simulator itself whether the request's session cookie
// is live, with a CurrentTime probe (which also refreshes the idle timer).
func (h *harness) sessionValid(r *http.Request) bool {
	if _, err := r.Cookie(soap.SessionCookieName); err != nil {
		return false
	}
	probe := httptest.NewRequest(http.MethodPost, "/sdk", strings.NewReader(envelope(
		`<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>`)))
	probe.Header.Set("Cookie", r.Header.Get("Cookie"))
	probe.Header.Set("User-Agent", r.UserAgent())
	probe.RemoteAddr = r.RemoteAddr
	rec := httptest.NewRecorder()
	h.inner.ServeHTTP(rec, probe)
	return rec.Code == http.StatusOK
}

// intercept handles an asynchronous task method. Returns false to let the
// simulator handle the call (e.g. Destroy_Task on a non-VM object).
func (h *harness) intercept(w http.ResponseWriter, r *http.Request, name string, body []byte) bool {
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil || method.This.Type != "VirtualMachine" {
		return false
	}
	if !h.sessionValid(r) {
		writeFault(w, "The session is not authenticated.", notAuthenticatedXML(method.This, "System.View"))
		return true
	}
	if _, ok := simulator.Map.Get(method.This).(*simulator.VirtualMachine); !ok {
		writeFault(w, fmt.Sprintf("managed object not found: %s", method.This), objectNotFoundXML(method.This))
		return true
	}

	var task *simulator.Task
	switch req := method.Body.(type) {
	case *types.CloneVM_Task:
		if _, ok := simulator.Map.Get(req.Folder).(*simulator.Folder); !ok {
			writeFault(w, fmt.Sprintf("managed object not found: %s", req.Folder), objectNotFoundXML(req.Folder))
			return true
		}
		task = h.startClone(req)
		holdCloneResponse()
	case *types.PowerOnVM_Task:
		task = h.startPower(req.This, "powerOn", func(ctx context.Context) (types.ManagedObjectReference, error) {
			res, err := methods.PowerOnVM_Task(ctx, h.client, &types.PowerOnVM_Task{This: req.This, Host: req.Host})
			if err != nil {
				return types.ManagedObjectReference{}, err
			}
			if _, f := innerTaskResult(res.Returnval); f == nil {
				h.poweredOn(req.This)
			}
			return res.Returnval, nil
		})
	case *types.PowerOffVM_Task:
		task = h.startPower(req.This, "powerOff", func(ctx context.Context) (types.ManagedObjectReference, error) {
			res, err := methods.PowerOffVM_Task(ctx, h.client, &types.PowerOffVM_Task{This: req.This})
			if err != nil {
				return types.ManagedObjectReference{}, err
			}
			if _, f := innerTaskResult(res.Returnval); f == nil {
				h.poweredOff(req.This)
			}
			return res.Returnval, nil
		})
	case *types.Destroy_Task:
		if f := destroyFaultFor(req.This); f != nil {
			task = h.startFailing(req.This, "destroy", f)
			break
		}
		task = h.startPower(req.This, "destroy", func(ctx context.Context) (types.ManagedObjectReference, error) {
			res, err := methods.Destroy_Task(ctx, h.client, &types.Destroy_Task{This: req.This})
			if err != nil {
				return types.ManagedObjectReference{}, err
			}
			return res.Returnval, nil
		})
	default:
		return false
	}
	writeOK(w, fmt.Sprintf(`<%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></%sResponse>`,
		name, xmlEscape(task.Self.Value), name))
	return true
}

// startPower creates a task on the VM that, after the power delay, runs the
// simulator's own method in-process and reports its outcome.
func (h *harness) startPower(vm types.ManagedObjectReference, id string,
	call func(context.Context) (types.ManagedObjectReference, error)) *simulator.Task {
	h.mu.Lock()
	delay := h.cfg.powerDelay
	h.mu.Unlock()
	task := simulator.CreateTask(vm, id, func(*simulator.Task) (res types.AnyType, fault types.BaseMethodFault) {
		defer recoverFault(&fault)
		time.Sleep(delay)
		ref, err := call(context.Background())
		if err != nil {
			return nil, faultOf(err)
		}
		return innerTaskResult(ref)
	})
	go task.Run()
	return task
}

// recoverFault turns a panic inside the simulator (it has a few, e.g. on
// objects caught half-created) into a task error instead of a crash.
func recoverFault(fault *types.BaseMethodFault) {
	if p := recover(); p != nil {
		fmt.Fprintf(os.Stderr, "deskpool-vcsim: recovered panic in task: %v\n", p)
		*fault = &types.SystemError{Reason: fmt.Sprint(p)}
	}
}

func faultOf(err error) types.BaseMethodFault {
	if soap.IsSoapFault(err) {
		if f, ok := soap.ToSoapFault(err).VimFault().(types.BaseMethodFault); ok {
			return f
		}
	}
	return &types.SystemError{Reason: err.Error()}
}

func isLinkedClone(spec *types.VirtualMachineCloneSpec) bool {
	if spec.Snapshot == nil || spec.Location.DiskMoveType != linkedMoveType {
		return false
	}
	for _, d := range spec.Location.Disk {
		if d.DiskMoveType != linkedMoveType {
			return false
		}
	}
	return true
}

func entityName(ref types.ManagedObjectReference) string {
	switch o := simulator.Map.Get(ref).(type) {
	case *simulator.Folder:
		return o.Name
	case *simulator.VirtualMachine:
		return o.Name
	case nil:
		return ref.Value
	}
	return ""
}

// folderHasChild reports whether the folder holds an entity with this name.
func folderHasChild(folder types.ManagedObjectReference, name string) bool {
	f, ok := simulator.Map.Get(folder).(*simulator.Folder)
	if !ok {
		return false
	}
	var children []types.ManagedObjectReference
	simulator.Map.WithLock(f, func() {
		children = append(children, f.ChildEntity...)
	})
	// Not Map.FindByName: it panics on a VM that is still being created
	// (in the folder, name not yet set).
	for _, c := range children {
		if entityName(c) == name {
			return true
		}
	}
	return false
}

func (h *harness) startClone(req *types.CloneVM_Task) *simulator.Task {
	folderName := entityName(req.Folder)
	key := nameKey{req.Folder, req.Name}

	received := time.Now().UnixMicro()
	chosen := chooseCloneFault(req)
	h.mu.Lock()
	cfg := h.cfg
	st := &h.stats
	record := len(h.clones)
	h.clones = append(h.clones, cloneRecord{Name: req.Name, Folder: folderName, ReceivedUs: received, PowerOn: req.Spec.PowerOn})
	st.cloneRequests++
	if !isLinkedClone(&req.Spec) {
		st.nonLinked++
	}
	st.inFlight++
	if st.inFlight > st.maxInFlight {
		st.maxInFlight = st.inFlight
	}
	st.inFlightByFolder[folderName]++
	if st.inFlightByFolder[folderName] > st.maxInFlightByFoler[folderName] {
		st.maxInFlightByFoler[folderName] = st.inFlightByFolder[folderName]
	}
	duplicate := h.reserved[key]
	if !duplicate {
		h.reserved[key] = true
	}
	fail := cfg.failRate > 0 && h.rng.Float64() < cfg.failRate
	leave := fail && cfg.leaveVMRate > 0 && h.rng.Float64() < cfg.leaveVMRate
	h.mu.Unlock()

	gen := h.clonesGen
	finish := func(ok bool) {
		done := time.Now().UnixMicro()
		h.mu.Lock()
		defer h.mu.Unlock()
		if gen == h.clonesGen && record < len(h.clones) {
			h.clones[record].DoneUs = done
			h.clones[record].Ok = ok
		}
		if !duplicate {
			delete(h.reserved, key)
		}
		h.stats.inFlight--
		h.stats.inFlightByFolder[folderName]--
		if ok {
			h.stats.clonesOK++
		} else {
			h.stats.clonesFailed++
		}
	}
	countDup := func() {
		h.mu.Lock()
		h.stats.duplicateNames++
		h.mu.Unlock()
	}

	task := simulator.CreateTask(req.This, "cloneVm", func(*simulator.Task) (res types.AnyType, fault types.BaseMethodFault) {
		defer func() { finish(fault == nil) }()
		defer recoverFault(&fault)

		dupFault := &types.DuplicateName{Name: req.Name, Object: req.Folder}
		if duplicate || folderHasChild(req.Folder, req.Name) {
			countDup()
			return nil, dupFault
		}
		if f := h.checkSnapshot(req); f != nil {
			return nil, f
		}
		if needsHost(&req.Spec) {
			return nil, &types.InvalidArgument{InvalidProperty: "spec.location.host"}
		}

		time.Sleep(cfg.cloneDelay)

		if f := h.checkSnapshot(req); f != nil { // removed while the clone ran
			return nil, f
		}
		if folderHasChild(req.Folder, req.Name) {
			countDup()
			return nil, dupFault
		}
		injected := &types.InsufficientResourcesFault{VimFault: types.VimFault{MethodFault: types.MethodFault{
			FaultMessage: []types.LocalizableMessage{{
				Key:     "com.vmware.vim.vpxd.vmprov.insufficientResources",
				Message: "Insufficient resources to satisfy the clone operation (injected by deskpool-vcsim)",
			}},
		}}}
		if fail && !leave {
			h.countInjected()
			return nil, injected
		}
		if chosen != nil && !chosen.leaveVM {
			return nil, chosen.fault
		}

		inner := *req
		inner.Spec.PowerOn = false
		inheritExtraConfig(req.This, &inner.Spec)
		cres, err := methods.CloneVM_Task(context.Background(), h.client, &inner)
		if err != nil {
			return nil, faultOf(err)
		}
		r, f := innerTaskResult(cres.Returnval)
		if f != nil {
			return nil, f
		}
		vm := r.(types.ManagedObjectReference)
		if req.Spec.Customization != nil {
			h.clonedWithCustomization(vm)
		}
		if fail { // leave the half-made VM behind
			h.countInjected()
			return nil, injected
		}
		if chosen != nil { // leave_vm: the VM stays, the task fails
			return nil, chosen.fault
		}
		if req.Spec.PowerOn {
			// vCenter powers the clone on inside the clone task: the task ends once the VM
			// runs, so the power-on latency is part of the clone's.
			time.Sleep(cfg.powerDelay)
			pres, err := methods.PowerOnVM_Task(context.Background(), h.client, &types.PowerOnVM_Task{This: vm})
			if err != nil {
				return nil, faultOf(err)
			}
			if _, f := innerTaskResult(pres.Returnval); f != nil {
				return nil, f
			}
			h.poweredOn(vm)
		}
		return vm, nil
	})
	go runTask(task)
	return task
}

func (h *harness) countInjected() {
	h.mu.Lock()
	h.stats.injectedFailures++
	h.mu.Unlock()
}

// checkSnapshot: spec.snapshot must exist and belong to the source VM.
func (h *harness) checkSnapshot(req *types.CloneVM_Task) types.BaseMethodFault {
	if req.Spec.Snapshot == nil {
		return nil
	}
	snap, ok := simulator.Map.Get(*req.Spec.Snapshot).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return &types.ManagedObjectNotFound{Obj: *req.Spec.Snapshot}
	}
	if snap.Vm != req.This {
		return &types.InvalidArgument{InvalidProperty: "spec.snapshot"}
	}
	return nil
}

// --- hand-written SOAP envelopes, in the simulator's own style ---

func envelope(inner string) string {
	return `<?xml version="1.0" encoding="UTF-8"?>` + "\n" +
		`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>` +
		inner + `</soapenv:Body></soapenv:Envelope>`
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func moXML(tag string, ref types.ManagedObjectReference) string {
	return fmt.Sprintf(`<%s type="%s">%s</%s>`, tag, xmlEscape(ref.Type), xmlEscape(ref.Value), tag)
}

func notAuthenticatedXML(obj types.ManagedObjectReference, priv string) string {
	return `<NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated">` + moXML("object", obj) +
		`<privilegeId>` + priv + `</privilegeId></NotAuthenticatedFault>`
}

func objectNotFoundXML(obj types.ManagedObjectReference) string {
	return `<ManagedObjectNotFoundFault xmlns="urn:vim25" xsi:type="ManagedObjectNotFound">` + moXML("obj", obj) +
		`</ManagedObjectNotFoundFault>`
}

func writeFault(w http.ResponseWriter, msg, detail string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = io.WriteString(w, envelope(`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>`+
		xmlEscape(msg)+`</faultstring><detail>`+detail+`</detail></soapenv:Fault>`))
}

func writeOK(w http.ResponseWriter, inner string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, envelope(inner))
}
