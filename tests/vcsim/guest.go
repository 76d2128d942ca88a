package main

// The guest, as vCenter reports it through VMware Tools, and guest customization.
//
// govmomi 0.24.2's simulator leaves guest.toolsRunningStatus at guestToolsNotRunning and
// guest.ipAddress unset whatever the power state, ignores a CloneSpec's customization and
// posts no Customization* events. A real vCenter, after a VM powers on: Tools start, the
// guest gets an address (a link-local 169.254.x.x while DHCP has not answered), and a clone
// made with a customization spec posts CustomizationStartedEvent, then CustomizationSucceeded
// or a CustomizationFailed subtype, on the VM. This file does that, through the simulator's
// registry (so property collectors see the changes) and its EventManager (so event history
// collectors and their latestPage see the events).
//
// After a power-on, with d the guest delay (-guest-delay, or POST /guest):
//
//	+d   guest.toolsRunningStatus = guestToolsRunning, guest.guestState = running;
//	     CustomizationStartedEvent when the clone carried a customization spec
//	+2d  CustomizationSucceeded (or CustomizationUnknownFailure for VMs a rule says fail);
//	     guest.ipAddress = a 127.0.0.0/8 address (or the rule's first_ip) and guest.net
//	+3d  the real address after a rule's first_ip
//
// A power-off clears it all: Tools not running, no address, guest.guestState notRunning.
// Addresses are in 127.0.0.0/8 (127.1.0.2 upwards, one per VM, kept across power cycles):
// nothing may ever connect to them.
//
// Control API (registered by controlMux):
//
//	GET|POST /guest   {"delay_ms": n, "rules": [{"pattern": "lab-00*", "no_tools": bool,
//	                  "no_ip": bool, "first_ip": "169.254.7.7" | "0.0.0.0",
//	                  "customization_failure": "message"}]} (any subset; rules replace the
//	                  rules). A rule applies to VMs whose name matches its pattern (path.Match
//	                  glob); the first matching rule wins. no_tools: Tools never start (nor
//	                  the address); no_ip: Tools run but no address is ever reported;
//	                  first_ip: reported first, the real address d later;
//	                  customization_failure: the customization fails with this message.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path"
	"reflect"
	"time"
	"unsafe"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

type guestRule struct {
	Pattern              string `json:"pattern"`
	NoTools              bool   `json:"no_tools"`
	NoIP                 bool   `json:"no_ip"`
	FirstIP              string `json:"first_ip"`
	CustomizationFailure string `json:"customization_failure"`
}

// guestSim is the harness's guest state (guarded by harness.mu).
type guestSim struct {
	delay time.Duration
	rules []guestRule
	// gen counts power changes per VM: a boot sequence stops once a later change happened.
	gen map[types.ManagedObjectReference]int
	// addr is each VM's address, kept across power cycles.
	addr map[types.ManagedObjectReference]string
	next int
	// customize holds VMs cloned with a customization spec that has not run yet.
	customize map[types.ManagedObjectReference]bool
}

func newGuestSim(delay time.Duration) guestSim {
	return guestSim{
		delay:     delay,
		gen:       map[types.ManagedObjectReference]int{},
		addr:      map[types.ManagedObjectReference]string{},
		next:      2,
		customize: map[types.ManagedObjectReference]bool{},
	}
}

func (h *harness) registerGuest(mux *http.ServeMux) {
	mux.HandleFunc("/guest", h.handleGuest)
}

func (h *harness) handleGuest(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		var in struct {
			DelayMs *int64       `json:"delay_ms"`
			Rules   *[]guestRule `json:"rules"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		if in.Rules != nil {
			for _, rule := range *in.Rules {
				if _, err := path.Match(rule.Pattern, ""); err != nil || rule.Pattern == "" {
					writeErr(w, http.StatusBadRequest, fmt.Errorf("rule pattern %q is not a glob", rule.Pattern))
					return
				}
			}
		}
		h.mu.Lock()
		if in.DelayMs != nil {
			h.guest.delay = time.Duration(*in.DelayMs) * time.Millisecond
		}
		if in.Rules != nil {
			h.guest.rules = append([]guestRule{}, *in.Rules...)
		}
		h.mu.Unlock()
	} else if r.Method != http.MethodGet {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use GET or POST"})
		return
	}
	h.mu.Lock()
	out := map[string]interface{}{"delay_ms": h.guest.delay.Milliseconds(), "rules": append([]guestRule{}, h.guest.rules...)}
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// clonedWithCustomization remembers that vm's first boot runs a guest customization.
func (h *harness) clonedWithCustomization(vm types.ManagedObjectReference) {
	h.mu.Lock()
	h.guest.customize[vm] = true
	h.mu.Unlock()
}

func (h *harness) vmName(ref types.ManagedObjectReference) (*simulator.VirtualMachine, string) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return nil, ""
	}
	var name string
	simulator.Map.WithLock(vm, func() { name = vm.Name })
	return vm, name
}

// poweredOn starts the guest's boot sequence.
func (h *harness) poweredOn(ref types.ManagedObjectReference) {
	vm, name := h.vmName(ref)
	if vm == nil {
		return
	}
	h.mu.Lock()
	h.guest.gen[ref]++
	gen := h.guest.gen[ref]
	delay := h.guest.delay
	var rule guestRule
	for _, r := range h.guest.rules {
		if ok, _ := path.Match(r.Pattern, name); ok {
			rule = r
			break
		}
	}
	customize := h.guest.customize[ref]
	delete(h.guest.customize, ref)
	addr, ok := h.guest.addr[ref]
	if !ok {
		n := h.guest.next
		h.guest.next++
		addr = fmt.Sprintf("127.%d.%d.%d", 1+(n>>16)&0xfe, (n>>8)&0xff, n&0xff)
		h.guest.addr[ref] = addr
	}
	h.mu.Unlock()

	current := func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.guest.gen[ref] == gen
	}
	go func() {
		time.Sleep(delay)
		if rule.NoTools || !current() {
			return
		}
		h.setGuest(vm, string(types.VirtualMachineToolsRunningStatusGuestToolsRunning), "running", "")
		if customize {
			h.postCustomization(vm, name, true, "")
		}
		time.Sleep(delay)
		if !current() {
			return
		}
		if customize {
			h.postCustomization(vm, name, false, rule.CustomizationFailure)
		}
		if rule.NoIP {
			return
		}
		if rule.FirstIP != "" {
			h.setGuest(vm, string(types.VirtualMachineToolsRunningStatusGuestToolsRunning), "running", rule.FirstIP)
			time.Sleep(delay)
			if !current() {
				return
			}
		}
		h.setGuest(vm, string(types.VirtualMachineToolsRunningStatusGuestToolsRunning), "running", addr)
	}()
}

// poweredOff clears what Tools reported.
func (h *harness) poweredOff(ref types.ManagedObjectReference) {
	vm, _ := h.vmName(ref)
	if vm == nil {
		return
	}
	h.mu.Lock()
	h.guest.gen[ref]++
	h.mu.Unlock()
	up := false
	simulator.Map.WithLock(vm, func() {
		up = vm.Guest != nil && (vm.Guest.IpAddress != "" ||
			vm.Guest.ToolsRunningStatus == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning))
	})
	if up { // no change to report for a guest that never came up
		h.setGuest(vm, string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning), "notRunning", "")
	}
}

// setGuest reports Tools' status and the guest's address ("" = none) through the registry.
func (h *harness) setGuest(vm *simulator.VirtualMachine, tools, state, addr string) {
	var addrVal interface{}
	if addr != "" {
		addrVal = addr
	}
	var net []types.GuestNicInfo
	simulator.Map.WithLock(vm, func() {
		if vm.Guest == nil {
			return
		}
		for _, n := range vm.Guest.Net {
			n.IpAddress = nil
			if addr != "" {
				n.IpAddress = []string{addr}
			}
			net = append(net, n)
		}
	})
	changes := []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: tools},
		{Name: "guest.guestState", Val: state},
		{Name: "guest.ipAddress", Val: addrVal},
		{Name: "summary.guest.toolsRunningStatus", Val: tools},
		{Name: "summary.guest.ipAddress", Val: addrVal},
	}
	if len(net) > 0 {
		changes = append(changes, types.PropertyChange{Name: "guest.net", Val: net})
	}
	simulator.Map.Update(vm, changes)
}

// postCustomization posts CustomizationStartedEvent (started) or the outcome: CustomizationSucceeded,
// or CustomizationUnknownFailure with the failure message.
func (h *harness) postCustomization(vm *simulator.VirtualMachine, name string, started bool, failure string) {
	ev := types.VmEvent{Event: types.Event{
		Vm: &types.VmEventArgument{EntityEventArgument: types.EntityEventArgument{Name: name}, Vm: vm.Self},
	}}
	var e types.BaseEvent
	switch {
	case started:
		ev.FullFormattedMessage = fmt.Sprintf("Started customization of VM %s", name)
		e = &types.CustomizationStartedEvent{CustomizationEvent: types.CustomizationEvent{VmEvent: ev}}
	case failure == "":
		ev.FullFormattedMessage = fmt.Sprintf("Customization of VM %s succeeded", name)
		e = &types.CustomizationSucceeded{CustomizationEvent: types.CustomizationEvent{VmEvent: ev}}
	default:
		ev.FullFormattedMessage = fmt.Sprintf("An error occurred while customizing VM %s: %s", name, failure)
		e = &types.CustomizationUnknownFailure{CustomizationFailed: types.CustomizationFailed{
			CustomizationEvent: types.CustomizationEvent{VmEvent: ev}, Reason: failure,
		}}
	}
	if _, err := methods.PostEvent(context.Background(), h.client, &types.PostEvent{
		This: *h.client.ServiceContent.EventManager, EventToPost: e,
	}); err != nil {
		fmt.Fprintf(os.Stderr, "deskpool-vcsim: posting %T: %v\n", e, err)
	}
}

// unlistEventCollector works around a lock-order inversion in govmomi 0.24.2: PostEvent runs
// with the EventManager locked and locks each collector to update its latestPage, while
// DestroyCollector runs with the collector locked and then locks the EventManager. A client
// destroying its collector while an event is posted (a VM powering on) deadlocks the whole
// simulator. Before the simulator sees a DestroyCollector, this takes the collector out of
// the EventManager's list under the EventManager's lock (the list is unexported: reflection,
// test harness only), so no PostEvent reaches for it afterwards.
//
// SetCollectorPageSize has the same inversion (it runs with the collector locked and locks
// the EventManager to refill the page from its history): for it the collector is taken off
// the list the same way, and the returned func puts it back once the simulator has answered. Events posted in between are in the page refilled from the history,
// except those posted after the refill and before the collector is back: a few microseconds
// of one call, made once per collector.
func unlistEventCollector(body []byte) (relist func()) {
	relist = func() {}
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil || method.This.Type != "EventHistoryCollector" {
		return
	}
	em := simulator.Map.EventManager()
	collectors := func() (reflect.Value, bool) {
		f := reflect.ValueOf(em).Elem().FieldByName("collectors")
		if !f.IsValid() {
			return reflect.Value{}, false
		}
		return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem(), true
	}
	key := reflect.ValueOf(method.This)
	var held reflect.Value
	simulator.Map.WithLock(em, func() {
		m, ok := collectors()
		if !ok {
			return
		}
		held = m.MapIndex(key)
		m.SetMapIndex(key, reflect.Value{})
	})
	if !held.IsValid() {
		return
	}
	return func() {
		// (The collector lives in its session's registry, not in Map: a DestroyCollector
		// racing this call would leave a stale entry, which PostEvent updates harmlessly.)
		simulator.Map.WithLock(em, func() {
			if m, ok := collectors(); ok {
				m.SetMapIndex(key, held)
			}
		})
	}
}
